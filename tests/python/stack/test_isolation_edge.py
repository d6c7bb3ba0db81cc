"""Isolation at the edge, through a whole ``sandbar up`` whose preview domain is ``sandbar.test``: every
``{port}-{id}.sandbar.test`` host is then same-site with every other, as under a real domain, so a page one sandbox
serves is same-site with another sandbox's daemon ports.

- Preview tokens (header, query, cookie, signed URLs) never open the daemon's ports (2280, 22220, 22222); an API
  key does.
- An app in a sandbox that echoes what it receives never sees an API key, a preview token or the proxy's cookie,
  with every combination of credentials, on private and public sandboxes; a query-string token on a page load is
  answered with a redirect that sets the cookie, with ``Referrer-Policy: no-referrer``.
- Headless Chromium on an attacker's preview page (sandbox A) cannot post to or open a socket on the victim's
  (sandbox B) toolbox and terminal, whether the browser holds the victim's preview cookies or even sends the
  victim's API key on its own: the victim's daemon does nothing (the files the attack would create do not exist).
- Revocation closes open sessions: an OpenSSH session ends when its access token is revoked, and a WebSocket a
  public sandbox let in without a credential ends when the sandbox is made private.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import socket
import signal
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

import pytest
from websockets.sync.client import connect as ws_connect

from sandbar_stack import remove_containers, start_stack
from test_browser import Cdp, CdpError  # noqa: F401 - the same DevTools client as the terminal test
from test_ssh import SSH_OPTS

DOMAIN = "sandbar.test"
ECHO_PORT = 8081
PAGE_PORT = 8000

# The app in the sandbox: answers every request with its request line and headers; a WebSocket upgrade gets one
# text frame ("hello") and is then held open until either side closes it.
ECHO_APP = r'''
import base64, hashlib, http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def any(self):
        if self.headers.get("Upgrade", "").lower() == "websocket":
            key = self.headers["Sec-WebSocket-Key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", base64.b64encode(hashlib.sha1(key.encode()).digest()).decode())
            self.end_headers()
            self.wfile.write(b"\x81\x05hello")
            self.wfile.flush()
            while self.rfile.read(1):
                pass
            self.close_connection = True
            return
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        out = (self.command + " " + self.path + "\n" + "".join(k + ": " + v + "\n" for k, v in self.headers.items())).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = any
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
'''

# The attacker's page: a multipart POST (a "simple" request: no preflight) to the victim's toolbox, and a
# WebSocket to the victim's terminal that types a command if it opens.
ATTACK_PAGE = r'''<!doctype html><html><body><script>
const p = new URLSearchParams(location.search);
const victim = p.get("victim"), tag = p.get("tag"), domain = p.get("domain");
const port = location.port ? ":" + location.port : "";
window.results = {};
const fd = new FormData();
fd.append("file", new Blob(["pwned"]), "x");
fetch(`${location.protocol}//2280-${victim}.${domain}${port}/files/upload?path=/tmp/pwned-fetch-${tag}`,
      {method: "POST", body: fd, mode: "no-cors", credentials: "include"})
  .then(r => { results.fetch = "sent:" + r.type; }, e => { results.fetch = "error:" + e; });
fetch(`${location.protocol}//${domain}${port}/toolbox/${victim}/files/upload?path=/tmp/pwned-toolbox-${tag}`,
      {method: "POST", body: fd, mode: "no-cors", credentials: "include"})
  .then(r => { results.toolbox = "sent:" + r.type; }, e => { results.toolbox = "error:" + e; });
const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://22222-${victim}.${domain}${port}/ws`);
ws.onopen = () => { results.ws = "open"; ws.send(`touch /tmp/pwned-ws-${tag}\r`); setTimeout(() => ws.close(), 3000); };
ws.onerror = () => { results.ws = results.ws || "error"; };
ws.onclose = (e) => { results.wsclose = e.code; if (results.ws !== "open") results.ws = "closed:" + e.code; };
</script></body></html>
'''


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("sandbar-edge")
    runner_id = "e2e-edge-" + secrets.token_hex(4)
    s = start_stack(data_dir, runner_id, extra=["--domain", DOMAIN])
    try:
        yield s
    finally:
        s.stop()
        remove_containers(runner_id)


@pytest.fixture(scope="module")
def client(edge):
    from daytona import Daytona, DaytonaConfig

    return Daytona(DaytonaConfig(api_url=edge.api_url, api_key=edge.api_key))


def _sandbox(client, page: str | None = None):
    sb = client.create(timeout=180)
    sb.fs.upload_file(ECHO_APP.encode(), "/tmp/echo.py")
    cmds = [f"setsid nohup python3 /tmp/echo.py {ECHO_PORT} >/tmp/echo.log 2>&1 &"]
    if page:
        sb.fs.create_folder("/tmp/site", "755")
        sb.fs.upload_file(page.encode(), "/tmp/site/attack.html")
        cmds.append(f"setsid nohup python3 -m http.server {PAGE_PORT} -d /tmp/site >/tmp/site.log 2>&1 &")
    for c in cmds:
        sb.process.exec(c)
    r = sb.process.exec(f"for i in $(seq 50); do curl -s -o /dev/null localhost:{ECHO_PORT} && exit 0; sleep 0.1; done; exit 1")
    assert r.exit_code == 0, "the echo app did not start"
    return sb


@pytest.fixture(scope="module")
def victim(client):
    sb = _sandbox(client)
    yield sb
    try:
        client.delete(sb)
    except Exception:  # noqa: BLE001 - cleanup must not hide the test's own failure
        pass


@pytest.fixture(scope="module")
def attacker(client):
    sb = _sandbox(client, ATTACK_PAGE)
    sb.set_public(True)
    yield sb
    try:
        client.delete(sb)
    except Exception:  # noqa: BLE001
        pass


def proxy_addr(edge) -> tuple[str, int]:
    u = urllib.parse.urlsplit(edge.proxy_http)
    return u.hostname, u.port


def through(edge, host: str, path: str, method: str = "GET", headers: dict | None = None, body: bytes | None = None):
    """One request to the proxy with ``Host: host``: ``(status, headers, body text)``."""
    h, p = proxy_addr(edge)
    conn = http.client.HTTPConnection(h, p, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Host": host, **(headers or {})})
        r = conn.getresponse()
        return r.status, r.headers, r.read().decode(errors="replace")
    finally:
        conn.close()


def preview_host(edge, port: int, sandbox_id: str) -> str:
    return f"{port}-{sandbox_id}.{DOMAIN}:{proxy_addr(edge)[1]}"


def test_preview_tokens_never_open_the_daemon_ports(edge, victim):
    for port in (2280, 22220, 22222):
        token = victim.get_preview_link(port).token
        host = preview_host(edge, port, victim.id)
        for how, path, headers in [
            ("header", "/version", {"X-Daytona-Preview-Token": token}),
            ("query", f"/version?DAYTONA_SANDBOX_AUTH_KEY={urllib.parse.quote(token)}", {}),
            ("cookie", "/version", {"Cookie": f"sandbar_preview_token={token}"}),
        ]:
            status, h, body = through(edge, host, path, headers=headers)
            assert status == 401, f"preview token ({how}) on {port}: {status} {body}"
            assert "set-cookie" not in {k.lower() for k in h.keys()}, f"{how} on {port} got a cookie"
        try:
            signed = victim.create_signed_preview_url(port, 60)
        except Exception:  # noqa: BLE001 - the API may refuse to sign a daemon port at all, which is as good
            signed = None
        if signed is not None:
            status, _, body = through(edge, f"{port}-{signed.token}.{DOMAIN}:{proxy_addr(edge)[1]}", "/version")
            assert status == 401, f"signed preview URL on {port}: {status} {body}"
    # The toolbox path with a preview token: 401; an API key opens the toolbox either way.
    token = victim.get_preview_link(2280).token
    h, p = proxy_addr(edge)
    status, _, _ = through(edge, f"{h}:{p}", f"/toolbox/{victim.id}/version", headers={"X-Daytona-Preview-Token": token})
    assert status == 401
    status, _, _ = through(edge, preview_host(edge, 2280, victim.id), "/version",
                           headers={"Authorization": f"Bearer {edge.api_key}"})
    assert status == 200


def assert_clean(seen: str, secrets_: list[str], what: str) -> None:
    for s in secrets_ + ["sandbar_preview_token", "DAYTONA_SANDBOX_AUTH_KEY", "X-Daytona-Preview-Token"]:
        assert s.lower() not in seen.lower(), f"{what}: the app saw {s!r}:\n{seen}"
    assert "x-sandbar-daemon-token" not in seen.lower(), f"{what}: daemon token leaked:\n{seen}"


def test_the_app_never_sees_our_credentials(edge, client, victim):
    token = victim.get_preview_link(ECHO_PORT).token
    host = preview_host(edge, ECHO_PORT, victim.id)
    key = edge.api_key
    try:
        for public in (False, True):
            victim.set_public(public)
            time.sleep(0.5)
            for mask in range(32):
                bearer, header, query, cookie, app_cookie = (bool(mask & b) for b in (1, 2, 4, 8, 16))
                what = f"public={public} bearer={bearer} header={header} query={query} cookie={cookie} app={app_cookie}"
                headers = {}
                if bearer:
                    headers["Authorization"] = f"Bearer {key}"
                if header:
                    headers["X-Daytona-Preview-Token"] = token
                cookies = ([f"sandbar_preview_token={token}"] if cookie else []) + (["theirs=1"] if app_cookie else [])
                if cookies:
                    headers["Cookie"] = "; ".join(cookies)
                q = f"&DAYTONA_SANDBOX_AUTH_KEY={urllib.parse.quote(token)}" if query else ""
                status, _, seen = through(edge, host, f"/echo?x=1{q}", "POST", headers, b"body")
                if not (public or bearer or header or query or cookie):
                    assert status == 401, f"{what}: {status} {seen}"
                    continue
                assert status == 200, f"{what}: {status} {seen}"
                assert seen.startswith("POST /echo?x=1\n"), f"{what}: {seen}"
                assert_clean(seen, [key, token], what)
                assert ("theirs=1" in seen) == app_cookie, f"{what}: {seen}"
    finally:
        victim.set_public(False)
    # The proxy learns of the change through the API's route feed: until it has, the sandbox is still public to it
    # and a request with a token is answered anonymously (no redirect). Wait for an anonymous 401.
    deadline = time.time() + 15
    while through(edge, host, "/echo")[0] != 401:
        assert time.time() < deadline, "the sandbox stayed public at the proxy"
        time.sleep(0.1)
    # A page load with the token in the query: a redirect to the same URL without it, the cookie set, no referrer.
    status, h, _ = through(edge, host, f"/page?a=1&DAYTONA_SANDBOX_AUTH_KEY={urllib.parse.quote(token)}")
    assert status in (302, 303), status
    assert h["Location"] == "/page?a=1", h["Location"]
    assert h["Referrer-Policy"] == "no-referrer"
    cookie = h["Set-Cookie"].split(";", 1)[0]
    assert cookie == f"sandbar_preview_token={token}"
    status, _, seen = through(edge, host, "/page?a=1", headers={"Cookie": cookie + "; theirs=2"})
    assert status == 200 and seen.startswith("GET /page?a=1\n"), seen
    assert_clean(seen, [token], "after the redirect")
    assert "theirs=2" in seen


def launch_chromium(extra: list[str]) -> tuple[subprocess.Popen, str, str]:
    if not shutil.which("chromium"):
        pytest.fail("chromium is needed (scripts/setup installs it)")
    profile = tempfile.mkdtemp(prefix="sandbar-chromium-")
    proc = subprocess.Popen(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--host-resolver-rules=MAP *.{DOMAIN} 127.0.0.1, MAP {DOMAIN} 127.0.0.1",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
         f"--user-data-dir={profile}", *extra, "about:blank"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    assert proc.stderr is not None
    # Chromium's first start on a busy 2-core machine (a build beside it) can take well over 30 s.
    deadline = time.time() + 90
    while time.time() < deadline:
        line = proc.stderr.readline()
        if line.startswith("DevTools listening on "):
            port = urllib.parse.urlsplit(line.split(" ", 3)[3].strip()).port
            for _ in range(100):
                targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
                page = next((t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page"), None)
                if page:
                    return proc, page, profile
                time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("chromium did not start its DevTools endpoint")


def test_chromium_on_an_attackers_page_cannot_drive_the_victims_daemon(edge, victim, attacker):
    port = proxy_addr(edge)[1]
    proc, page, profile = launch_chromium([])
    try:
        cdp = Cdp(page)
        cdp.call("Page.enable")
        cdp.call("Network.enable")
        # The victim has opened their terminal and toolbox with preview links (the old way): any cookie the
        # proxy sets for them is now in this browser.
        for p in (22222, 2280):
            tok = urllib.parse.quote(victim.get_preview_link(p).token)
            cdp.call("Page.navigate", {"url": f"http://{p}-{victim.id}.{DOMAIN}:{port}/?DAYTONA_SANDBOX_AUTH_KEY={tok}"})
            time.sleep(1.5)
        outcomes = {}
        for tag, ambient in (("cookie", None), ("ambient-key", edge.api_key)):
            if ambient:
                # Worse still: the browser sends the victim's API key on every request by itself (as a browser
                # does with a session cookie). Only the Origin rule stands between the page and the daemon.
                cdp.call("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Bearer {ambient}"}})
            url = (f"http://{PAGE_PORT}-{attacker.id}.{DOMAIN}:{port}/attack.html?"
                   + urllib.parse.urlencode({"victim": victim.id, "tag": tag, "domain": DOMAIN}))
            cdp.call("Page.navigate", {"url": url})
            cdp.wait_for(f"location.search.includes('tag={tag}') && typeof results === 'object'"
                         " && results.fetch !== undefined && results.toolbox !== undefined && results.ws !== undefined",
                         f"the attack page ({tag}) to finish")
            time.sleep(3.5)  # a terminal that opened has typed its command and closed
            outcomes[tag] = cdp.eval("JSON.stringify(results)")
        # The victim's daemon did nothing: none of the files the attacks would create exist.
        r = victim.process.exec("ls /tmp | grep pwned || true")
        assert r.result.strip() == "", f"the attacker's page drove the victim's daemon: {r.result!r}; {outcomes}"
        for tag, out in outcomes.items():
            assert json.loads(out)["ws"] != "open", f"{tag}: the terminal WebSocket opened: {out}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def test_revoking_ssh_access_ends_an_open_session(edge, victim):
    access = victim.create_ssh_access(expires_in_minutes=10)
    host, port = edge.ssh.rsplit(":", 1)
    proc = subprocess.Popen(["ssh", *SSH_OPTS, "-p", port, f"{access.token}@{host}", "echo open; sleep 300; echo never"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "open\n", proc.stderr.read() if proc.stderr else ""
        victim.revoke_ssh_access(access.token)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the SSH session stayed open for 60 s after its access was revoked")
        assert proc.returncode == 255, err
        assert "revoked" in err, err
        assert "never" not in out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_making_a_sandbox_private_closes_its_anonymous_websockets(edge, victim):
    victim.set_public(True)
    try:
        time.sleep(0.5)
        sock = socket.create_connection(proxy_addr(edge), timeout=30)
        ws = ws_connect(f"ws://{preview_host(edge, ECHO_PORT, victim.id)}/ws", sock=sock, open_timeout=30)
        assert ws.recv(timeout=30) == "hello"
        victim.set_public(False)
        from websockets.exceptions import ConnectionClosed

        try:
            ws.recv(timeout=60)
            pytest.fail("the WebSocket got a message instead of closing")
        except TimeoutError:
            pytest.fail("the WebSocket stayed open for 60 s after the sandbox was made private")
        except ConnectionClosed as e:
            assert e.rcvd is not None and e.rcvd.code == 1008, f"closed without the policy close code: {e!r}"
        ws.close()
    finally:
        victim.set_public(False)
