"""Access logs and request ids, and no secret in any log, on a ``sandbar up`` stack of its own (PostgreSQL as its
database, an S3 archive store with credentials in its URL and in ``AWS_*``, so those secrets are in play).

The Daytona SDK drives it through the proxy (``/api`` there): create, exec, file upload, a preview with its token
(header, ``?DAYTONA_SANDBOX_AUTH_KEY=`` query, a signed preview URL), an SSH access token used by OpenSSH, requests
with a bad API key. Then: one request id (and one W3C trace id) shows in the proxy's and the API's access lines
(API traffic) or the proxy's and the daemon's (toolbox traffic); and none of the secrets (API key, runner and proxy tokens, the daemon
token, preview and SSH tokens, the bad key, the S3 keys, the database password) appears in any log the stack wrote
(``<data-dir>/logs/*.log``) or in the daemon's (its container's log). ``sandbar up``'s own console output is not
checked: printing the first API key is its job.

Env: as sandbar_stack.py, plus ``SANDBAR_TEST_DATABASE_URL`` (as scale_stack.py).
"""

from __future__ import annotations

import re
import secrets
import subprocess
import urllib.parse
from dataclasses import dataclass, field

import httpx
import pytest

from sandbar_stack import Stack, remove_containers, start_stack
from scale_stack import Database
from sandbar_util import wait_until

SSH_OPTS = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR"]
PREVIEW_PORT = 8080


@dataclass
class Run:
    stack: Stack
    db: Database
    sandbox_id: str = ""
    container: str = ""
    secrets: dict[str, str] = field(default_factory=dict)
    daemon_log: str = ""

    def service_logs(self) -> dict[str, str]:
        logs = self.stack.data_dir / "logs"
        return {p.name: plain(p.read_text(errors="replace")) for p in sorted(logs.glob("*.log"))}

    def log(self, name: str) -> str:
        return plain((self.stack.data_dir / "logs" / f"{name}.log").read_text(errors="replace"))

    def daemon(self) -> str:
        out = subprocess.run(["docker", "logs", self.container], capture_output=True, text=True, errors="replace",
                             timeout=60, check=False)
        return plain(out.stdout + out.stderr)


def plain(text: str) -> str:
    """Without the terminal colours the services' text format writes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def proxy_host(stack: Stack) -> str:
    return urllib.parse.urlsplit(stack.proxy_http).netloc


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    db = Database()
    db.create()
    data_dir = tmp_path_factory.mktemp("sandbar-logs")
    runner_id = "e2e-logs-" + secrets.token_hex(4)
    s3_key_id, s3_secret, aws_secret = "AKIA" + secrets.token_hex(8).upper(), secrets.token_hex(20), secrets.token_hex(20)
    env = {
        "DATABASE_URL": db.url,
        # Never reached (nothing is archived): here so that the keys are in the runner's configuration.
        "SANDBAR_ARCHIVE_STORE": f"s3://sandbar-logs/p?endpoint=http://127.0.0.1:9&allow_http=true&region=us-east-1"
                                 f"&access_key_id={s3_key_id}&secret_access_key={s3_secret}",
        "AWS_ACCESS_KEY_ID": s3_key_id,
        "AWS_SECRET_ACCESS_KEY": aws_secret,
    }
    stack = None
    try:
        stack = start_stack(data_dir, runner_id, env=env)
        r = Run(stack=stack, db=db)
        password = urllib.parse.urlsplit(db.url).password or ""
        r.secrets.update({
            "API key": stack.api_key,
            "S3 secret key (store URL)": s3_secret,
            "S3 key id": s3_key_id,
            "S3 secret key (AWS_SECRET_ACCESS_KEY)": aws_secret,
            "database URL": db.url,
            "database password in a URL": f":{password}@",
        })
        for line in (data_dir / "secrets.env").read_text().splitlines():
            name, _, value = line.partition("=")
            if name.endswith("_TOKEN") and value:
                r.secrets[name] = value
        drive(r)
        yield r
    finally:
        if stack is not None:
            stack.stop()
        remove_containers(runner_id)
        db.drop()


def drive(r: Run) -> None:
    """Everything a user does, through the proxy; the secrets it meets go into ``r.secrets``."""
    from daytona import Daytona, DaytonaConfig, SessionExecuteRequest

    stack = r.stack
    key = stack.api_key
    daytona = Daytona(DaytonaConfig(api_url=stack.proxy_http + "/api", api_key=key))
    sb = daytona.create(timeout=180)
    r.sandbox_id = sb.id
    r.container = subprocess.run(["docker", "ps", "-q", "--filter", f"label=sandbar.sandbox.id={sb.id}"],
                                 capture_output=True, text=True, check=True).stdout.strip()
    assert r.container, "the sandbox's container"
    env = subprocess.run(["docker", "inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}", r.container],
                         capture_output=True, text=True, check=True).stdout
    for line in env.splitlines():
        name, _, value = line.partition("=")
        if name == "SANDBAR_DAEMON_TOKEN" and value:
            r.secrets["daemon token"] = value

    assert sb.process.exec("echo hi").result.strip() == "hi"
    sb.fs.upload_file(b"<p>preview</p>\n", "/tmp/www/index.html")
    sb.process.create_session("www")
    sb.process.execute_session_command(
        "www", SessionExecuteRequest(command=f"cd /tmp/www && exec python3 -m http.server {PREVIEW_PORT}",
                                     run_async=True))

    # The preview, with its token in a header, then in the query (which the proxy trades for a cookie).
    link = sb.get_preview_link(PREVIEW_PORT)
    r.secrets["preview token"] = link.token
    host = urllib.parse.urlsplit(link.url).netloc
    with httpx.Client(base_url=stack.proxy_http, timeout=30) as c:
        wait_until(lambda: c.get("/index.html", headers={"Host": host, "X-Daytona-Preview-Token": link.token})
                   .status_code == 200, timeout=30, interval=0.3, what="the preview server")
        q = c.get("/index.html?a=1&DAYTONA_SANDBOX_AUTH_KEY=" + urllib.parse.quote(link.token), headers={"Host": host})
        assert q.status_code == 302, q.text
        signed = sb.create_signed_preview_url(PREVIEW_PORT, 120)
        r.secrets["signed preview token"] = signed.token
        s = c.get("/index.html", headers={"Host": f"{PREVIEW_PORT}-{signed.token}.{host.split('.', 1)[1]}"})
        assert s.status_code == 200, s.text

        # Bad credentials: an unknown API key on the API and the toolbox, an unknown preview token.
        bad = "sb_bad_" + secrets.token_hex(16)
        r.secrets["bad API key"] = bad
        assert c.get("/api/sandbox", headers={"Authorization": f"Bearer {bad}"}).status_code == 401
        assert c.get(f"/toolbox/{sb.id}/version", headers={"Authorization": f"Bearer {bad}"}).status_code == 401
        assert c.get("/index.html", headers={"Host": host, "X-Daytona-Preview-Token": bad}).status_code in (401, 403)
        assert c.get(f"/index.html?DAYTONA_SANDBOX_AUTH_KEY={bad}", headers={"Host": host}).status_code in (401, 403)

    # SSH: a token from the SDK, checked by the API, used by OpenSSH through the gateway.
    access = sb.create_ssh_access(expires_in_minutes=10)
    r.secrets["SSH access token"] = access.token
    assert sb.validate_ssh_access(access.token).valid
    gw_host, gw_port = stack.ssh.rsplit(":", 1)
    out = subprocess.run(["ssh", *SSH_OPTS, "-p", gw_port, f"{access.token}@{gw_host}", "echo ssh-ok"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.stdout.strip() == "ssh-ok", out.stderr
    bad_ssh = "bad" + secrets.token_hex(16)
    r.secrets["bad SSH token"] = bad_ssh
    out = subprocess.run(["ssh", *SSH_OPTS, "-p", gw_port, f"{bad_ssh}@{gw_host}", "true"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode != 0
    sb.process.delete_session("www")


def test_one_request_id_through_proxy_and_api(run):
    stack, key = run.stack, run.stack.api_key
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=stack.proxy_http, timeout=30) as c:
        # The client's id, when valid, is the request's id everywhere; the answer carries it.
        mine = "obs-" + secrets.token_hex(8)
        trace = secrets.token_hex(16)
        resp = c.get(f"/api/sandbox/{run.sandbox_id}?verbose=1",
                     headers={**auth, "X-Request-Id": mine, "traceparent": f"00-{trace}-{secrets.token_hex(8)}-01"})
        assert resp.status_code == 200 and resp.headers["x-request-id"] == mine, resp.headers
        proxy = wait_until(lambda: lines_with(run.log("proxy"), mine), timeout=10, what="the proxy's line")
        api = wait_until(lambda: lines_with(run.log("api"), mine), timeout=10, what="the API's line")
        assert len(proxy) == 1 and "access" in proxy[0] and "status=200" in proxy[0] and "GET" in proxy[0], proxy
        assert "upstream=\"api\"" in proxy[0] or "upstream=api" in proxy[0], proxy
        access = [line for line in api if "access" in line]
        assert len(access) == 1, api
        assert "/api/sandbox/{" in access[0] and "status=200" in access[0] and "organization_id=" in access[0], access
        assert run.sandbox_id not in access[0], "the route template, not the path"
        # The client's W3C trace is continued through the proxy to the API (ids only, no exporter).
        assert f"trace_id={trace}" in proxy[0].replace('"', "") and f"trace_id={trace}" in access[0], (proxy, access)
        assert "verbose" not in proxy[0], "no query in the proxy's line"

        # Without one (or with one that is not a plain short id), the proxy makes one and the API logs it too.
        for sent in (None, "has space", "x" * 200, "quote\"d"):
            headers = {**auth, **({"X-Request-Id": sent} if sent else {})}
            resp = c.get("/api/sandbox", headers=headers)
            made = resp.headers["x-request-id"]
            assert resp.status_code == 200 and made != sent and re.fullmatch(r"[0-9a-f]{32}", made), made
            wait_until(lambda: lines_with(run.log("proxy"), made) and lines_with(run.log("api"), made),
                       timeout=10, what=f"the proxy's and the API's lines for {made}")
            # A trace the proxy started: the API's line has its id too.
            started = re.search(r'trace_id="?([0-9a-f]{32})', lines_with(run.log("proxy"), made)[0])
            assert started and f"trace_id={started.group(1)}" in lines_with(run.log("api"), made)[-1]

        # A refusal is a line too, with its status.
        bad_id = "obs-bad-" + secrets.token_hex(4)
        resp = c.get("/api/sandbox", headers={"Authorization": "Bearer nope", "X-Request-Id": bad_id})
        assert resp.status_code == 401 and resp.headers["x-request-id"] == bad_id
        api = wait_until(lambda: lines_with(run.log("api"), bad_id), timeout=10, what="the API's 401 line")
        assert "status=401" in api[-1], api

    # Straight at the API: its own id, or the client's.
    direct = "obs-direct-" + secrets.token_hex(4)
    resp = httpx.get(stack.api_url + "/sandbox", headers={**auth, "X-Request-Id": direct}, timeout=30)
    assert resp.status_code == 200 and resp.headers["x-request-id"] == direct
    wait_until(lambda: lines_with(run.log("api"), direct), timeout=10, what="the API's line for a direct call")
    resp = httpx.get(stack.api_url + "/sandbox", headers=auth, timeout=30)
    assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["x-request-id"])


def test_one_request_id_through_proxy_and_daemon(run):
    stack, key = run.stack, run.stack.api_key
    mine = "obs-tb-" + secrets.token_hex(8)
    trace = secrets.token_hex(16)
    resp = httpx.post(f"{stack.proxy_http}/toolbox/{run.sandbox_id}/process/execute",
                      json={"command": "echo from-toolbox"}, timeout=60,
                      headers={"Authorization": f"Bearer {key}", "X-Request-Id": mine,
                               "traceparent": f"00-{trace}-{secrets.token_hex(8)}-01"})
    assert resp.status_code == 200 and "from-toolbox" in resp.text, resp.text
    assert resp.headers["x-request-id"] == mine
    proxy = wait_until(lambda: lines_with(run.log("proxy"), mine), timeout=10, what="the proxy's line")
    assert len(proxy) == 1 and run.sandbox_id in proxy[0] and "status=200" in proxy[0], proxy
    assert "upstream=\"daemon\"" in proxy[0] or "upstream=daemon" in proxy[0], proxy
    assert "bytes_out=" in proxy[0] and "bytes_out=0 " not in proxy[0], proxy
    daemon = wait_until(lambda: lines_with(run.daemon(), mine), timeout=10, what="the daemon's line")
    assert any("/process/execute" in line and "status=200" in line and f"trace_id={trace}" in line
               for line in daemon), daemon


def test_no_secret_in_any_log(run):
    # Stopped first, so that every line (shutdown included) is written; the daemon's log is read before its
    # container goes.
    run.daemon_log = run.daemon()
    run.stack.stop()
    logs = run.service_logs()
    logs[f"daemon ({run.container})"] = run.daemon_log
    assert {"api.log", "proxy.log", "runner.log"} <= set(logs), sorted(logs)
    assert len(lines_with(logs["proxy.log"], "access")) >= 10, "the proxy wrote access lines"
    assert len(lines_with(logs["api.log"], "access")) >= 10, "the API wrote access lines"
    secrets_ = {name: value for name, value in run.secrets.items() if value}
    for must in ("API key", "SANDBAR_RUNNER_TOKEN", "SANDBAR_PROXY_TOKEN", "daemon token", "preview token",
                 "signed preview token", "SSH access token", "bad API key", "database URL"):
        assert must in secrets_, f"the test did not meet the {must}"
    leaks = []
    for file, text in logs.items():
        for name, value in secrets_.items():
            if value in text:
                where = next(line for line in text.splitlines() if value in line)
                leaks.append(f"{file}: the {name} appears: {where[:300]}")
        for m in re.finditer(r"[?&](DAYTONA_SANDBOX_AUTH_KEY|token|api_key|secret_access_key)=[^&\s\"]+", text,
                             re.IGNORECASE):
            leaks.append(f"{file}: a query token: {m.group(0)[:80]}")
    assert not leaks, "\n".join(leaks)
