"""Docker's own registry (Debian's ``docker-registry``) serving on this machine for a test, until stopped: plain
HTTP, or with a self-signed TLS certificate; optionally behind htpasswd basic auth; optionally allowing deletes
(``storage.delete.enabled``). Its data lives in a temporary directory removed by ``stop()``. Used by
test_registry.py (organizations' registries) and test_hosts.py (the internal registry images travel through)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def run_ok(*args: str, stdin: str | None = None) -> str:
    out = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, f"{args}: {out.stdout}{out.stderr}"
    return out.stdout


class Registry:
    """A ``docker-registry`` on ``host:port`` until stopped; optionally htpasswd auth, a TLS certificate, deletes."""

    def __init__(self, host: str = "127.0.0.1", auth: tuple[str, str] | None = None, tls: bool = False,
                 delete: bool = False):
        self.dir = Path(tempfile.mkdtemp(prefix="sandbar-registry-"))
        self.host = host
        self.port = free_port(host)
        self.addr = f"{host}:{self.port}"
        self.tls = tls
        self.proc: subprocess.Popen | None = None
        config = [
            "version: 0.1", "log:", "  level: warn", "storage:", "  filesystem:",
            f"    rootdirectory: {self.dir / 'data'}",
        ]
        if delete:
            config += ["  delete:", "    enabled: true"]
        config += ["http:", f"  addr: {self.addr}"]
        if tls:
            self.cert = self.dir / "cert.pem"
            run_ok("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={host}",
                   "-addext", f"subjectAltName=IP:{host}", "-keyout", str(self.dir / "key.pem"), "-out",
                   str(self.cert))
            config += ["  tls:", f"    certificate: {self.cert}", f"    key: {self.dir / 'key.pem'}"]
        if auth:
            (self.dir / "htpasswd").write_text(run_ok("htpasswd", "-Bbn", *auth))
            config += ["auth:", "  htpasswd:", "    realm: sandbar-test", f"    path: {self.dir / 'htpasswd'}"]
        (self.dir / "config.yml").write_text("\n".join(config) + "\n")
        try:
            self.proc = subprocess.Popen(["docker-registry", "serve", str(self.dir / "config.yml")],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 20
            while time.time() < deadline:
                try:
                    socket.create_connection((host, self.port), timeout=1).close()
                    return
                except OSError:
                    time.sleep(0.1)
            raise AssertionError(f"docker-registry did not listen on {self.addr}")
        except BaseException:
            self.stop()
            raise

    def push(self, image: str, name: str, auth: tuple[str, str] | None = None) -> str:
        """Pushes local ``image`` as ``addr/name`` (logging in through a throwaway CLI config); drops the tag."""
        target = f"{self.addr}/{name}"
        run_ok("docker", "tag", image, target)
        cli = tempfile.mkdtemp(prefix="sandbar-docker-cli-")
        try:
            if auth:
                run_ok("docker", "--config", cli, "login", "-u", auth[0], "--password-stdin", self.addr,
                       stdin=auth[1])
            run_ok("docker", "--config", cli, "push", target)
        finally:
            shutil.rmtree(cli, ignore_errors=True)
            subprocess.run(["docker", "rmi", target], capture_output=True, check=False)
        return target

    def tags(self, repository: str) -> list[str]:
        """The tags of ``repository`` (plain HTTP, no auth): empty when it has none or is unknown."""
        url = f"http{'s' if self.tls else ''}://{self.addr}/v2/{repository}/tags/list"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read()).get("tags") or []
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return []
            raise

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)
