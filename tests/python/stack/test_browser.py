"""Headless Chromium opens a sandbox's browser terminal through the proxy's HTTPS listener, with the certificate
`sandbar up` generated trusted for this key (its SPKI pinned, not certificate errors ignored), types a command the
way a person does (DevTools key events) and the test reads the answer from the page's terminal buffer.

The terminal is a daemon port, which preview tokens do not open: the browser sends the organization's API key
(DevTools' extra headers, as a dashboard's session would), on the page and on its WebSocket, which is same-origin."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

import pytest
from websockets.sync.client import connect as ws_connect

SCREEN = ("(() => { const b = term.buffer; const out = []; for (let i = 0; i < b.length; i++) "
          "{ const l = b.getLine(i); if (l) out.push(l.translateToString(true)); } return out.join('\\n'); })()")


def spki_hash(cert_pem: bytes) -> str:
    """Base64 SHA-256 of the certificate's SubjectPublicKeyInfo (what Chromium pins)."""
    pub = subprocess.run(["openssl", "x509", "-pubkey", "-noout"], input=cert_pem, capture_output=True, check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pub, capture_output=True,
                         check=True).stdout
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


class CdpError(RuntimeError):
    def __init__(self, method: str, error: dict):
        super().__init__(f"{method}: {error}")
        self.error = error


class Cdp:
    def __init__(self, url: str):
        self.ws = ws_connect(url, open_timeout=30, max_size=None)
        self.ids = itertools.count(1)

    def call(self, method: str, params: dict | None = None) -> dict:
        i = next(self.ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params or {}}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == i:
                if "error" in msg:
                    raise CdpError(method, msg["error"])
                return msg.get("result", {})

    def eval(self, expr: str):
        return self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True}).get("result", {}).get("value")

    def wait_for(self, expr: str, what: str, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if self.eval(expr) is True:
                    return
            except CdpError as e:
                # The target is listed as soon as its navigation starts, before its document has a JavaScript
                # context: until then Chromium answers "Cannot find default execution context"; an evaluation
                # that a navigation overtakes gets "Inspected target navigated or closed".
                message = str(e.error.get("message", ""))
                if "execution context" not in message and "navigated or closed" not in message:
                    raise
            time.sleep(0.1)
        pytest.fail(f"timed out waiting for {what}; page shows:\n{self.eval(SCREEN)}\n{self.eval('document.body.innerText')}")

    def type_line(self, text: str) -> None:
        self.eval("term.focus()")
        for c in text:
            self.call("Input.dispatchKeyEvent", {"type": "keyDown", "key": c, "text": c})
            self.call("Input.dispatchKeyEvent", {"type": "keyUp", "key": c})
        self.call("Input.dispatchKeyEvent", {"type": "keyDown", "key": "Enter", "code": "Enter",
                                             "windowsVirtualKeyCode": 13, "text": "\r"})
        self.call("Input.dispatchKeyEvent", {"type": "keyUp", "key": "Enter", "code": "Enter",
                                             "windowsVirtualKeyCode": 13})


def find_cert(data_dir) -> bytes:
    tls = data_dir / "tls"
    for p in sorted(tls.glob("*.pem")) + sorted(tls.glob("*.crt")):
        text = p.read_bytes()
        if b"BEGIN CERTIFICATE" in text:
            return text
    pytest.fail(f"no generated certificate in {tls}: {list(tls.iterdir()) if tls.exists() else 'missing'}")


def test_chromium_types_into_the_terminal_through_https(stack, sandbox):
    if not shutil.which("chromium"):
        pytest.fail("chromium is needed (scripts/setup installs it)")
    cert = find_cert(stack.data_dir)
    https_port = urllib.parse.urlsplit(stack.proxy_https).port
    host = f"22222-{sandbox.id}.localhost"
    page = f"https://{host}:{https_port}/"
    profile = tempfile.mkdtemp(prefix="sandbar-chromium-")
    proc = subprocess.Popen(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1000,700", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
         f"--ignore-certificate-errors-spki-list={spki_hash(cert)}",
         f"--user-data-dir={profile}", "about:blank"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        browser_ws = None
        assert proc.stderr is not None
        deadline = time.time() + 30
        while time.time() < deadline and browser_ws is None:
            line = proc.stderr.readline()
            if line.startswith("DevTools listening on "):
                browser_ws = line.split(" ", 3)[3].strip()
        assert browser_ws, "chromium did not start its DevTools endpoint"
        port = urllib.parse.urlsplit(browser_ws).port
        target = None
        for _ in range(100):
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
            target = next((t["webSocketDebuggerUrl"] for t in targets
                           if t["type"] == "page"), None)
            if target:
                break
            time.sleep(0.1)
        assert target, "no page target for the terminal"
        cdp = Cdp(target)
        cdp.call("Network.enable")
        cdp.call("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Bearer {stack.api_key}"}})
        cdp.call("Page.navigate", {"url": page})
        cdp.wait_for("typeof term === 'object' && document.getElementById('status').textContent === ''",
                     "the terminal to connect")
        cdp.type_line("echo $((6*7))")
        cdp.wait_for(f"{SCREEN}.split('\\n').some(l => l.trim() === '42')", "42 on the screen")
        # The page was served over HTTPS with the generated certificate, which Chromium accepted for its key.
        assert cdp.eval("location.protocol") == "https:"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
