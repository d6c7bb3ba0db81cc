"""Registry images through the Daytona SDK against ``sandbar up``, with Docker's own registry (Debian's
``docker-registry``) serving on this machine: an open one and one behind htpasswd basic auth on loopback, and one
with a self-signed TLS certificate on the docker0 address (Docker trusts loopback registries without TLS, so the
certificate is tested where Docker checks it).

An image built here is pushed to each; the SDK then creates a sandbox from ``127.0.0.1:PORT/team/app:1``, builds from
an ``Image`` whose ``FROM`` is that name (with the pull in the build log), takes a snapshot of a private image
(refused without credentials with a reason that says what to do, then pulled once credentials are registered
through ``/docker-registry``), and another organization cannot use the private image although it is now on the
host."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import requests
from daytona import (
    CreateSandboxFromImageParams,
    CreateSandboxFromSnapshotParams,
    CreateSnapshotParams,
    Daytona,
    DaytonaConfig,
    DaytonaError,
    Image,
)
from registry import Registry

BASE = os.environ.get("SANDBAR_TEST_IMAGE") or os.environ.get("SANDBAR_STACK_IMAGE", "sandbar-sandbox:default")
DOCKER0 = "172.17.0.1"


@pytest.fixture(scope="module")
def registries():
    made: list[Registry] = []
    try:
        open_ = Registry()
        made.append(open_)
        private = Registry(auth=("team", "s3cret"))
        made.append(private)
        yield open_, private
    finally:
        for r in made:
            r.stop()


def _delete(daytona, sandbox) -> None:
    try:
        daytona.delete(sandbox, timeout=60)
    except Exception:  # noqa: BLE001 - cleanup must not hide the test's own failure
        pass


def _rmi(*names: str) -> None:
    subprocess.run(["docker", "rmi", "-f", *names], capture_output=True, check=False)


def _api(stack, method: str, path: str, key: str | None = None, **kw) -> requests.Response:
    headers = {"Authorization": f"Bearer {key or stack.api_key}"}
    return requests.request(method, f"{stack.api_url}{path}", headers=headers, timeout=30, **kw)


def test_create_and_build_from_an_open_registry(daytona, registries):
    open_, _ = registries
    token = uuid.uuid4().hex[:8]
    image = open_.push(BASE, f"team/app-{token}:1")
    sandboxes = []
    try:
        assert subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0
        sb = daytona.create(CreateSandboxFromImageParams(image=image), timeout=180)
        sandboxes.append(sb)
        assert sb.state == "started"
        assert sb.process.exec(f"echo pulled-{token}").result.strip() == f"pulled-{token}"

        logs: list[str] = []
        built = Image.base(image).run_commands(f"echo {token} > /built")
        sb2 = daytona.create(CreateSandboxFromImageParams(image=built), timeout=300, on_snapshot_create_logs=logs.append)
        sandboxes.append(sb2)
        assert sb2.process.exec("cat /built").result.strip() == token
        text = "\n".join(logs)
        assert f"Pulling {image}" in text, text

        # An image the registry does not have: the create ends in error with the registry's reason, no hang.
        with pytest.raises(DaytonaError) as e:
            daytona.create(CreateSandboxFromImageParams(image=f"{open_.addr}/team/none-{token}:1"), timeout=120)
        assert "not found" in str(e.value), e.value
    finally:
        for sb in sandboxes:
            _delete(daytona, sb)
        _rmi(image)


def test_private_registry_needs_the_organizations_credentials(stack, daytona, registries):
    _, private = registries
    token = uuid.uuid4().hex[:8]
    image = private.push(BASE, f"team/secret-{token}:1", auth=("team", "s3cret"))
    name = f"e2e-private-{token}"
    sandboxes = []
    registry_id = None
    try:
        with pytest.raises(DaytonaError) as e:
            daytona.snapshot.create(CreateSnapshotParams(name=name, image=image))
        assert "/docker-registry" in str(e.value), e.value
        daytona.snapshot.delete(daytona.snapshot.get(name))
        assert subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0

        # Wrong credentials: refused too.
        bad = {"name": "team", "url": private.addr, "username": "team", "password": "wrong"}
        r = _api(stack, "POST", "/docker-registry", json=bad)
        assert r.status_code == 201, r.text
        registry_id = r.json()["id"]
        assert "password" not in r.json() and "wrong" not in r.text
        with pytest.raises(DaytonaError):
            daytona.snapshot.create(CreateSnapshotParams(name=name, image=image))
        daytona.snapshot.delete(daytona.snapshot.get(name))

        # The right ones (an update keeps the entry): pulled, and a sandbox runs from the snapshot.
        good = dict(bad, password="s3cret")
        assert _api(stack, "PATCH", f"/docker-registry/{registry_id}", json=good).status_code == 200
        snap = daytona.snapshot.create(CreateSnapshotParams(name=name, image=image))
        assert snap.state == "active"
        sb = daytona.create(CreateSandboxFromSnapshotParams(snapshot=name), timeout=180)
        sandboxes.append(sb)
        assert sb.process.exec("echo private-ok").result.strip() == "private-ok"

        # Another organization: the image is on the host now, but it is pulled again without our credentials and
        # refused; the credentials themselves are not visible to it.
        other_key = _new_org_key(stack)
        assert _api(stack, "GET", "/docker-registry", key=other_key).json() == []
        assert _api(stack, "GET", f"/docker-registry/{registry_id}", key=other_key).status_code == 404
        other = Daytona(DaytonaConfig(api_url=stack.api_url, api_key=other_key))
        with pytest.raises(DaytonaError) as e:
            other.create(CreateSandboxFromImageParams(image=image), timeout=120)
        assert "/docker-registry" in str(e.value), e.value
    finally:
        for sb in sandboxes:
            _delete(daytona, sb)
        if registry_id:
            _api(stack, "DELETE", f"/docker-registry/{registry_id}")
        _rmi(image)


def test_a_self_signed_registry_needs_its_ca_on_the_runner_host(daytona):
    if os.geteuid() != 0:
        pytest.skip("installing a registry CA in /etc/docker/certs.d needs root")
    registry = Registry(host=DOCKER0, tls=True)
    token = uuid.uuid4().hex[:8]
    certs = Path("/etc/docker/certs.d") / registry.addr
    image = None
    sb = None
    try:
        # Pushing needs the CA too (the Docker CLI goes through the same engine).
        certs.mkdir(parents=True, exist_ok=True)
        shutil.copy(registry.cert, certs / "ca.crt")
        image = registry.push(BASE, f"team/tls-{token}:1")
        shutil.rmtree(certs)
        with pytest.raises(DaytonaError) as e:
            daytona.create(CreateSandboxFromImageParams(image=image), timeout=120)
        assert f"/etc/docker/certs.d/{registry.addr}/ca.crt" in str(e.value), e.value

        certs.mkdir(parents=True, exist_ok=True)
        shutil.copy(registry.cert, certs / "ca.crt")
        sb = daytona.create(CreateSandboxFromImageParams(image=image), timeout=180)
        assert sb.process.exec("echo tls-ok").result.strip() == "tls-ok"
    finally:
        if sb is not None:
            _delete(daytona, sb)
        shutil.rmtree(certs, ignore_errors=True)
        if image:
            _rmi(image)
        registry.stop()


def _new_org_key(stack) -> str:
    """A second organization's API key, made with `sandbar-api bootstrap` against the stack's database."""
    from sandbar_stack import new_org_key

    return new_org_key(stack, "registry-other-" + uuid.uuid4().hex[:6])
