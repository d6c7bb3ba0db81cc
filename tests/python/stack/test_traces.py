"""OpenTelemetry traces across the stack: ``sandbar up`` with ``SANDBAR_OTLP_ENDPOINT`` pointing at a collector
stand-in (an HTTP receiver here that decodes each ``ExportTraceServiceRequest`` with the OTLP protobuf schema), and
one Daytona SDK create through the proxy under a known W3C ``traceparent``. The trace must hold spans of all four
processes (``sandbar-proxy``, ``sandbar-api``, ``sandbar-runner``, ``sandbar-daemon``, the last collected by the
runner since a sandbox reaches no collector) and be one tree: every span's parent is a span of the trace, except
the proxy's spans of the SDK's calls, whose parent is the client's span. The path is proxy -> API request -> authorize and the
create job -> the runner's job -> its Docker calls and the daemon's start and entrypoint.

Env: as sandbar_stack.py.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sandbar_stack import remove_containers, start_stack
from sandbar_util import wait_until


@dataclass(frozen=True)
class Span:
    service: str
    trace_id: str
    span_id: str
    parent: str
    name: str
    kind: int
    start: int
    end: int


class Collector:
    """An OTLP/HTTP trace receiver on loopback: ``POST /v1/traces`` with a protobuf body."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.requests = 0
        self.errors: list[str] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                ok = self.path == "/v1/traces" and self.headers.get("Content-Type") == "application/x-protobuf"
                try:
                    req = ExportTraceServiceRequest.FromString(body)
                except Exception as e:  # noqa: BLE001 - a bad body is what the test reports
                    ok, why = False, f"undecodable body: {e}"
                else:
                    why = f"{self.path} {self.headers.get('Content-Type')}"
                with collector.lock:
                    collector.requests += 1
                    if not ok:
                        collector.errors.append(why)
                    else:
                        collector.spans.extend(spans_of(req))
                self.send_response(200 if ok else 400)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def spans_of(req: ExportTraceServiceRequest) -> list[Span]:
    out = []
    for rs in req.resource_spans:
        service = next((a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "")
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(Span(service, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.name, s.kind,
                                s.start_time_unix_nano, s.end_time_unix_nano))
    return out


SERVICES = {"sandbar-proxy", "sandbar-api", "sandbar-runner", "sandbar-daemon"}


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    collector = Collector()
    data_dir = tmp_path_factory.mktemp("sandbar-traces")
    runner_id = "e2e-traces-" + secrets.token_hex(4)
    stack = None
    try:
        stack = start_stack(data_dir, runner_id, env={"SANDBAR_OTLP_ENDPOINT": collector.url,
                                                     "RUST_LOG": "info,sandbar_runner=debug"})
        yield stack, collector
    finally:
        if stack is not None:
            stack.stop()
        remove_containers(runner_id)
        collector.close()


def test_one_create_is_one_connected_trace_across_the_four_processes(traced):
    from daytona import Daytona, DaytonaConfig

    stack, collector = traced
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    daytona = Daytona(DaytonaConfig(api_url=stack.proxy_http + "/api", api_key=stack.api_key))
    # The SDK has no public knob for extra headers: its API client's defaults go on every call it makes.
    daytona._api_client.default_headers["traceparent"] = f"00-{trace_id}-{client_span}-01"
    sb = daytona.create(timeout=180)
    try:
        def complete():
            spans = collector.trace(trace_id)
            names = {(s.service, s.name) for s in spans}
            have = {s.service for s in spans}
            return spans if have == SERVICES and ("sandbar-daemon", "entrypoint") in names else None

        try:
            spans = wait_until(complete, timeout=60, interval=0.5, what="spans of all four services")
        except AssertionError:
            got = sorted({(s.service, s.name) for s in collector.trace(trace_id)})
            pytest.fail(f"the trace is incomplete: {got}; collector requests {collector.requests}, errors "
                        f"{collector.errors}; all services seen: {sorted({s.service for s in collector.spans})}\n"
                        f"runner log:\n{stack.log('runner')}")
        assert not collector.errors, collector.errors

        by_id = {s.span_id: s for s in spans}
        assert len(by_id) == len(spans), "span ids are unique"
        # One tree under the client's span: each SDK call (the create, its polls) is a proxy span whose parent is
        # the client's; every other span's parent is in the trace.
        roots = [s for s in spans if s.parent not in by_id]
        assert roots and {(r.service, r.parent) for r in roots} == {("sandbar-proxy", client_span)}, roots
        for s in spans:
            assert s.end >= s.start > 0, s

        def chain(s: Span) -> list[str]:
            out = []
            while s is not None:
                out.append(f"{s.service}:{s.name}")
                s = by_id.get(s.parent)
            return out

        create = [s for s in spans if s.service == "sandbar-api" and s.name == "POST /api/sandbox"]
        assert len(create) == 1, sorted(chain(s)[0] for s in spans)
        assert by_id[create[0].parent].service == "sandbar-proxy"
        assert any(s.name == "authorize" and s.parent == create[0].span_id for s in spans), "authorize under create"
        job = [s for s in spans if s.service == "sandbar-runner" and s.name == "job CREATE_SANDBOX"]
        assert len(job) == 1 and job[0].parent == create[0].span_id, [chain(s) for s in job]
        docker = [s for s in spans if s.service == "sandbar-runner" and s.name.startswith("docker ")]
        assert {"docker create container", "docker start container"} <= {s.name for s in docker}, docker
        assert all(s.parent == job[0].span_id for s in docker), [chain(s) for s in docker]
        entry = next(s for s in spans if s.service == "sandbar-daemon" and s.name == "entrypoint")
        assert chain(entry)[1:] == ["sandbar-runner:job CREATE_SANDBOX", "sandbar-api:POST /api/sandbox",
                                    f"sandbar-proxy:{by_id[create[0].parent].name}"], chain(entry)
        # The runner's log names the traceparent each job continued (debug): the hop from the API is visible.
        assert trace_id in (stack.data_dir / "logs" / "runner.log").read_text(errors="replace")
    finally:
        daytona.delete(sb)
