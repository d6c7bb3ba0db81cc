"""The web dashboard in headless Chromium (DevTools) against ``sandbar up``, served by the proxy over HTTPS (its
generated certificate pinned by SPKI, not certificate errors ignored): the URL ``sandbar up`` prints; a wrong key
gets the sign-in page back; signing in (the key is in no page, the cookie is HttpOnly, Secure, SameSite=Strict); a
sandbox created from the form reaches ``started`` on the page without a reload (server-sent events); on its page a
command typed into the terminal answers, and the terminal reattaches to its session after a reload; a file dropped
on the file browser is listed and downloads back the same; a listening port gets a preview link; usage is
charted; stopped and deleted from the list's buttons; an API key created on the keys page works at the API until it
is revoked there; a snapshot built from a Dockerfile with its log followed, and a sandbox of it whose entrypoint's
output the page follows; a request without the CSRF token and cross-site form posts are refused; an expired
session goes back to the sign-in page by itself. Screenshots of the main pages (laptop and phone width) go to
``$SANDBAR_TEST_OUTPUT/dashboard`` (default ``target/test-output/dashboard``)."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from test_browser import SCREEN, Cdp, CdpError, find_cert, spki_hash
from test_isolation_edge import launch_chromium

BASE = os.environ.get("SANDBAR_STACK_IMAGE", "sandbar-sandbox:default")
OUT = Path(os.environ.get("SANDBAR_TEST_OUTPUT", Path(__file__).resolve().parents[3] / "target" / "test-output")) \
    / "dashboard"


def api(stack, method: str, path: str, key: str, body: dict | None = None) -> tuple[int, object]:
    req = urllib.request.Request(f"{stack.api_url}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read().decode()
            return r.status, json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Page:
    def __init__(self, cdp):
        self.cdp = cdp

    def go(self, url: str) -> None:
        """Navigates and waits for the new document: the page it leaves is marked first, since Chromium may answer
        the first evaluations after ``Page.navigate`` from the old document, whose readyState is already complete."""
        try:
            self.js("window.__leaving = true")
        except CdpError:
            pass  # no document yet (about:blank before its first navigation)
        self.cdp.call("Page.navigate", {"url": url})
        self.cdp.wait_for("window.__leaving !== true && document.readyState === 'complete'", f"{url} to load")

    def ready(self) -> None:
        self.cdp.wait_for("document.readyState === 'complete'", "the page to load")

    def js(self, expr: str):
        return self.cdp.eval(expr)

    def js_await(self, expr: str):
        r = self.cdp.call("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True})
        return r.get("result", {}).get("value")

    def wait(self, expr: str, what: str, timeout: float = 30) -> None:
        self.cdp.wait_for(expr, what, timeout)

    def shot(self, name: str) -> Path:
        OUT.mkdir(parents=True, exist_ok=True)
        data = self.cdp.call("Page.captureScreenshot", {"format": "png"})["data"]
        path = OUT / f"{name}.png"
        path.write_bytes(base64.b64decode(data))
        return path

    def submit(self, form: str, values: dict) -> None:
        """Fills `form`'s fields by name and submits it the way its button would."""
        self.js(f"(() => {{ const f = document.querySelector({json.dumps(form)}); const v = {json.dumps(values)};"
                " for (const k in v) { const e = f.elements[k]; if (e.type === 'checkbox') e.checked = !!v[k];"
                " else e.value = v[k]; } f.requestSubmit(); return true; })()")


def row_state(name: str) -> str:
    return ("(() => { const r = [...document.querySelectorAll('#sandbox-rows tr')].find(r => "
            f"r.querySelector('th a')?.textContent === {json.dumps(name)}); "
            "return r ? r.dataset.state : null; })()")


def sign_in(page: Page, url: str, key: str) -> None:
    page.go(url)
    page.wait("!!document.querySelector('#key')", "the sign-in page")
    page.submit("form[action='/dashboard/login']", {"key": key})
    page.wait("location.pathname === '/dashboard/sandboxes' && !!document.querySelector('#sandbox-rows')",
              "the sandboxes page")


def wait_started(stack, sandbox_id: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = api(stack, "GET", f"/sandbox/{sandbox_id}", stack.api_key)[1]["state"]
        if state == "started":
            return
        assert state not in ("error", "build_failed"), state
        time.sleep(0.5)
    pytest.fail(f"sandbox {sandbox_id} did not start")


def workbench(page: Page, sandbox_id: str) -> None:
    """The sandbox page's terminal, file browser, ports and usage, as a person uses them."""
    cdp = page.cdp
    page.wait("document.querySelector('#term-status').textContent.startsWith('connected')", "the terminal", 60)
    token = secrets.token_hex(3)
    cdp.type_line(f"echo term-{token}-$((6*7)) && cd /tmp && python3 -m http.server 8123 >/dev/null 2>&1 &")
    page.wait(f"{SCREEN}.includes('term-{token}-42')", "the command's output in the terminal")
    # Reload: the page reattaches to the same session, whose output replays.
    page.go(f"{page.js('location.href')}")
    page.wait("document.querySelector('#term-status').textContent.startsWith('connected')", "the terminal again", 60)
    page.wait(f"{SCREEN}.includes('term-{token}-42')", "the session's output replayed after a reload")

    # A file dropped on the file browser lands in the folder shown, is listed and downloads back the same.
    page.wait("document.querySelectorAll('#file-rows tr').length > 0", "the work directory's listing")
    content = f"dropped {token} \u00e9\u00e8 " + "x" * 3000
    page.js(f"(() => {{ const dt = new DataTransfer(); dt.items.add(new File([{json.dumps(content)}], 'drop-{token}.txt'));"
            " document.querySelector('#files-drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true,"
            " cancelable: true})); return true; })()")
    row = f"document.querySelector('#file-rows tr[data-name=\"drop-{token}.txt\"]')"
    page.wait(f"!!{row}", "the dropped file in the listing")
    back = page.js_await(f"fetch({row}.querySelector('a').href, {{credentials: 'same-origin'}}).then(r => r.text())")
    assert back == content, "the downloaded file differs from the dropped one"
    assert page.js(f"{row}.querySelector('a').hasAttribute('download')")
    page.js(f"{row}.querySelector('button').click()")
    page.wait(f"document.querySelector('#file-view-body').textContent === {json.dumps(content)}", "the file shown")

    # The listening port the terminal started, with a preview link.
    # The server started in the background may not listen yet: refresh, as a person would, until it is listed.
    listed = False
    deadline = time.time() + 60
    while not listed and time.time() < deadline:
        page.js("document.querySelector('#ports-refresh').click()")
        page.wait("!document.querySelector('#ports').hasAttribute('aria-busy')", "the port list to load", 30)
        listed = page.js("document.querySelector('#ports').textContent.includes('port 8123')")
        if not listed:
            time.sleep(1)
    shown = page.js("document.querySelector('#ports').textContent")
    assert listed, f"port 8123 never listed: {shown}"
    page.js("[...document.querySelectorAll('#ports li')].find(l => l.textContent.includes('8123'))"
            ".querySelector('button').click()")
    page.wait("!!document.querySelector('#ports a[href*=\"8123-\"]')", "the preview link of port 8123")
    # Usage: charts once the runner has sampled the sandbox (the page asks every 30 s).
    page.wait("!!document.querySelector('#usage[data-samples] svg')", "the usage charts", 75)


def test_dashboard_in_chromium(stack):
    printed = [m.group(1) for line in stack.proc.lines if (m := re.match(r"^dashboard:\s+(\S+)", line))]
    assert printed == [f"{stack.proxy_http}/dashboard/"], f"sandbar up printed {printed}"
    # The same dashboard on the proxy's HTTPS listener, as `sandbar up --https` prints it.
    https_port = urllib.parse.urlsplit(stack.proxy_https).port
    origin = f"https://localhost:{https_port}"
    url = f"{origin}/dashboard/"
    pin = spki_hash(find_cert(stack.data_dir))
    proc, target, profile = launch_chromium(["--window-size=1100,760", f"--ignore-certificate-errors-spki-list={pin}"])
    name = f"dash-{secrets.token_hex(3)}"
    sandbox_id = None
    try:
        page = Page(Cdp(target))
        page.cdp.call("Page.enable")
        page.cdp.call("Emulation.setDeviceMetricsOverride",
                      {"width": 1100, "height": 760, "deviceScaleFactor": 1, "mobile": False})

        # Not signed in: the sign-in page. A wrong key gets it again, with no session.
        page.go(url)
        page.wait("location.pathname === '/dashboard/login' && !!document.querySelector('#key')", "the sign-in page")
        page.shot("signin")
        page.submit("form", {"key": "sbk_wrong"})
        page.wait("document.querySelector('.error')?.textContent.includes('unknown, expired or revoked') === true",
                  "the wrong key's error")
        assert page.js("document.querySelector('#key').value") == "", "the key was echoed into the page"

        sign_in(page, url, stack.api_key)
        assert stack.api_key not in page.js("document.documentElement.outerHTML")
        assert "sandbar_session" not in page.js("document.cookie"), "the session cookie is readable by scripts"
        cookies = page.cdp.call("Network.getCookies", {"urls": [origin]})["cookies"]
        session = next(c for c in cookies if c["name"] == "sandbar_session")
        assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Strict", session
        assert stack.api_key not in json.dumps(cookies)

        # Create from the form; the row appears and reaches `started` with no reload.
        page.js("window.__noReload = 1; document.querySelector('details.create').open = true")
        page.submit("#create-sandbox", {"name": name, "labels": "dash=1\nteam=web", "cpu": "1"})
        page.wait(f"{row_state(name)} !== null", "the new sandbox's row", 60)
        page.wait(f"{row_state(name)} === 'started'", "the sandbox to reach started on the page", 180)
        assert page.js("window.__noReload") == 1, "the page reloaded"
        sandbox_id = page.js(f"[...document.querySelectorAll('#sandbox-rows tr')].find(r => "
                             f"r.querySelector('th a').textContent === {json.dumps(name)}).dataset.id")
        assert page.js("document.querySelector('#sandbox-rows').textContent.includes('dash=1')")
        page.shot("sandboxes")

        # Without the CSRF token the cookie alone changes nothing, even from the dashboard's own origin.
        status = page.js_await(f"fetch('/api/sandbox/{sandbox_id}/stop', "
                               "{method: 'POST', credentials: 'same-origin'}).then(r => r.status)")
        assert status == 403, status
        code, sb = api(stack, "GET", f"/sandbox/{sandbox_id}", stack.api_key)
        assert sb["state"] == "started", f"a CSRF-less stop went through ({status})"

        # Filters: by label and by state (a page load with the filter in its query).
        page.go(f"{url}sandboxes?label=dash%3D1")
        page.wait(f"{row_state(name)} === 'started'", "the label filter to show the sandbox")
        page.go(f"{url}sandboxes?state=stopped")
        page.wait(f"{row_state(name)} === null && !!document.querySelector('#sandbox-rows')",
                  "the state filter to hide the started sandbox")

        # The sandbox's page: an SSH command.
        page.go(f"{url}sandboxes/{sandbox_id}")
        page.js("document.querySelector('button[data-ssh]').click()")
        page.wait("document.querySelector('#ssh-out').value.startsWith('ssh ')", "an ssh command")
        workbench(page, sandbox_id)
        page.shot("sandbox")

        # Fork from the list: a new row appears and reaches `started`, live.
        page.go(f"{url}sandboxes")
        page.js("window.__noReload = 1; window.confirm = () => true")
        before = page.js("[...document.querySelectorAll('#sandbox-rows tr[data-id]')].map(r => r.dataset.id)")
        page.js(f"document.querySelector('button[data-action=fork][data-id=\"{sandbox_id}\"]').click()")
        new_row = (f"[...document.querySelectorAll('#sandbox-rows tr[data-id]')]"
                   f".find(r => !{json.dumps(before)}.includes(r.dataset.id))")
        page.wait(f"{new_row}?.dataset.state === 'started'", "the fork's row reaching started", 180)
        fork_id = page.js(f"{new_row}.dataset.id")
        api(stack, "DELETE", f"/sandbox/{fork_id}", stack.api_key)

        # Stop, then delete (confirmed) from the list's buttons, watching the states change live.
        page.js(f"document.querySelector('button[data-action=stop][data-id=\"{sandbox_id}\"]').click()")
        page.wait(f"{row_state(name)} === 'stopped'", "the sandbox to stop on the page", 120)
        page.js(f"document.querySelector('button[data-action=delete][data-id=\"{sandbox_id}\"]').click()")
        page.wait(f"{row_state(name)} === null", "the deleted sandbox to leave the list", 120)
        assert page.js("window.__noReload") == 1
        sandbox_id = None

        # API keys: made on the page (shown once), working at the API, revoked on the page, refused after.
        page.go(f"{url}keys")
        key_name = f"dash-key-{secrets.token_hex(3)}"
        page.submit("#create-key", {"name": key_name})
        page.wait("document.querySelector('#new-key-value').value.startsWith('sbk_')", "the new key")
        new_key = page.js("document.querySelector('#new-key-value').value")
        assert api(stack, "GET", "/sandbox", new_key)[0] == 200
        page.shot("keys")
        page.go(f"{url}keys")
        assert new_key not in page.js("document.documentElement.outerHTML"), "the key was shown twice"
        page.js("window.confirm = () => true")
        page.js(f"document.querySelector('button[data-revoke=\"{key_name}\"]').click()")
        page.wait(f"!document.querySelector('button[data-revoke=\"{key_name}\"]')", "the revoked key to go")
        assert api(stack, "GET", "/sandbox", new_key)[0] == 401, "the revoked key still works"

        # A snapshot built from a Dockerfile, its log followed on the page.
        page.go(f"{url}snapshots")
        token = secrets.token_hex(3)
        page.submit("#create-snapshot", {"name": f"dash-build-{token}",
                                          "dockerfile": f"FROM {BASE}\nRUN echo built-$((6*7))-{token}\n"
                                                        f"CMD [\"sh\", \"-c\", \"echo entry-{token}-$((3+4)); sleep 600\"]\n"})
        page.wait(f"document.querySelector('#build-log').textContent.includes('built-42-{token}')",
                  "the build's output in the log", 300)
        page.wait("document.querySelector('#build-log').dataset.done === 'true'", "the build log to end", 300)
        page.shot("snapshots")
        # A sandbox of that snapshot: its page follows what its entrypoint prints.
        code, sb = api(stack, "POST", "/sandbox", stack.api_key, {"snapshot": f"dash-build-{token}"})
        assert code == 200, sb
        sandbox_id = sb["id"]
        wait_started(stack, sandbox_id)
        page.go(f"{url}sandboxes/{sandbox_id}")
        page.wait(f"document.querySelector('#entry-logs').textContent.includes('entry-{token}-7')",
                  "the entrypoint's output on the page", 60)
        assert page.js("!document.querySelector('#ports').textContent.includes('2280')"), "the daemon's ports listed"
        api(stack, "DELETE", f"/sandbox/{sandbox_id}", stack.api_key)
        deadline = time.time() + 120
        while (r := api(stack, "GET", f"/sandbox/{sandbox_id}", stack.api_key))[0] != 404 \
                and r[1]["state"] != "destroyed":
            assert time.time() < deadline, "the snapshot's sandbox was not deleted"
            time.sleep(0.5)
        sandbox_id = None
        # The snapshot deleted from its row (confirmed).
        page.go(f"{url}snapshots")
        page.js("window.confirm = () => true")
        button = f"document.querySelector('button[data-delete-snapshot=\"dash-build-{token}\"]')"
        page.wait(f"!!{button}", "the snapshot's delete button")
        page.js(f"{button}.click()")
        page.wait(f"!{button}", "the deleted snapshot to leave the list", 60)
        listed = api(stack, "GET", "/snapshots?limit=100", stack.api_key)[1]["items"]
        assert all(s["name"] != f"dash-build-{token}" for s in listed), "the snapshot is still listed"

        # Cross-site: a page elsewhere posts forms to the dashboard's API and sign-in. Nothing happens.
        code, sb = api(stack, "POST", "/sandbox", stack.api_key, {"labels": {"dash": "csrf"}})
        victim = sb["id"]
        try:
            for action, fields in ((f"{origin}/api/sandbox/{victim}/stop", {}),
                                   (f"{origin}/dashboard/login", {"key": stack.api_key}),
                                   (f"{origin}/dashboard/logout", {"csrf": "guess"})):
                inputs = "".join(f'<input name="{k}" value="{v}">' for k, v in fields.items())
                html = f'<form method="post" action="{action}">{inputs}</form><script>document.forms[0].submit()</script>'
                page.cdp.call("Page.navigate", {"url": "data:text/html," + urllib.parse.quote(html)})
                page.wait("location.protocol !== 'data:' && document.readyState === 'complete'",
                          f"the cross-site post to {action}")
                text = page.js("document.body.innerText")
                assert re.search(r'"statusCode":\s*40[13]|refused', text), f"{action} answered: {text[:300]}"
            time.sleep(1)
            assert api(stack, "GET", f"/sandbox/{victim}", stack.api_key)[1]["state"] == "started"
            # Still signed in: the cross-site logout did nothing.
            page.go(f"{url}sandboxes")
            assert page.js("location.pathname") == "/dashboard/sandboxes"
        finally:
            api(stack, "DELETE", f"/sandbox/{victim}", stack.api_key)

        # Phone width: the list still fits (the table scrolls inside its box, the page does not).
        page.cdp.call("Emulation.setDeviceMetricsOverride",
                      {"width": 390, "height": 800, "deviceScaleFactor": 1, "mobile": True})
        page.go(f"{url}sandboxes")
        # The override reaches the renderer on its own time: wait until the page is laid out at the phone's width.
        page.wait("document.documentElement.clientWidth <= 400", "the phone's width to apply")
        # The list is rebuilt from the API on its own schedule and laid out after that: a page that fits settles
        # to fit within a few seconds (CI once read an overflow while no element was wider than the phone).
        deadline = time.time() + 15
        while not page.js("document.documentElement.scrollWidth <= 400") and time.time() < deadline:
            time.sleep(0.2)
        wide = page.js("[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 400"
                       " && !e.closest('.table-wrap')).map(e => e.tagName + '#' + e.id + '.' + e.className).slice(0, 8)")
        assert page.js("document.documentElement.scrollWidth <= 400"), f"the page overflows a phone's width: {wide}"
        page.shot("sandboxes-phone")
        page.cdp.call("Emulation.setDeviceMetricsOverride",
                      {"width": 1100, "height": 760, "deviceScaleFactor": 1, "mobile": False})

        # Sign out, then a session whose key expires: the open page goes back to sign in by itself. Signed out
        # from the keys page: on the list, a reload its live stream may start can overtake the form's navigation.
        page.go(f"{url}keys")
        page.js("document.querySelector('form[action=\"/dashboard/logout\"] button').click()")
        page.wait("location.pathname === '/dashboard/login'", "the sign-in page after signing out")
        expires = (datetime.now(timezone.utc) + timedelta(seconds=10)).isoformat().replace("+00:00", "Z")
        code, short = api(stack, "POST", "/api-keys", stack.api_key,
                          {"name": f"dash-short-{secrets.token_hex(3)}", "permissions": [], "expiresAt": expires})
        assert code == 201, short
        sign_in(page, url, short["value"])
        page.js("window.__noReload = 1")
        page.wait("location.pathname === '/dashboard/login'", "the expired session to end on the page", 30)
        page.go(f"{url}keys")
        assert page.js("location.pathname") == "/dashboard/login"
    finally:
        if sandbox_id:
            api(stack, "DELETE", f"/sandbox/{sandbox_id}", stack.api_key)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
