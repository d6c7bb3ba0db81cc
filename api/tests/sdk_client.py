"""Drives sandbar-api with the official Daytona Python SDK (0.226.1): create, get, list, labels, timers,
preview links, SSH access, resize, stop/start/archive, delete. The Rust test (api/tests/sdk.rs) starts the API
and a fake runner, then runs this with DAYTONA_API_URL and DAYTONA_API_KEY set. Prints OK at the end."""

import time

from daytona import (
    CreateSandboxFromSnapshotParams,
    CreateSnapshotParams,
    Daytona,
    DaytonaError,
    DaytonaNotFoundError,
    ListSandboxesQuery,
    Resources,
)

d = Daytona()
sb = d.create(CreateSandboxFromSnapshotParams(labels={"team": "sdk"}, auto_stop_interval=30), timeout=30)
assert sb.state == "started", sb.state
assert sb.cpu == 1 and sb.memory == 1 and sb.disk == 3, (sb.cpu, sb.memory, sb.disk)
assert sb.labels["team"] == "sdk"

got = d.get(sb.id)
assert got.id == sb.id and got.auto_stop_interval == 30

ids = [s.id for s in d.list(ListSandboxesQuery(labels={"team": "sdk"}))]
assert ids == [sb.id], ids

labels = sb.set_labels({"team": "sdk", "k": "v"})
assert labels["k"] == "v", labels
sb.set_autostop_interval(45)
sb.set_auto_archive_interval(120)
sb.set_auto_delete_interval(-1)
sb.set_public(False)
sb.refresh_data()
assert (sb.auto_stop_interval, sb.auto_archive_interval, sb.auto_delete_interval) == (45, 120, -1)

link = sb.get_preview_link(3000)
assert link.url.startswith("http://3000-" + sb.id + "."), link.url
assert link.token
signed = sb.create_signed_preview_url(8080, expires_in_seconds=60)
assert signed.port == 8080 and signed.token
sb.expire_signed_preview_url(8080, signed.token)

ssh = sb.create_ssh_access(10)
assert ssh.ssh_command.startswith("ssh -p "), ssh.ssh_command
assert sb.validate_ssh_access(ssh.token).valid
sb.revoke_ssh_access(ssh.token)
assert not sb.validate_ssh_access(ssh.token).valid
sb.refresh_activity()

sb.resize(Resources(cpu=2, memory=2))
sb.refresh_data()
assert (sb.cpu, sb.memory) == (2, 2), (sb.cpu, sb.memory)

sb.stop()
assert sb.state == "stopped", sb.state
sb.archive()
# Archiving is a runner job: the SDK does not wait for it, so poll like a user would.
deadline = time.time() + 30
while True:
    sb.refresh_data()
    if sb.state != "archiving" or time.time() > deadline:
        break
    time.sleep(0.1)
assert sb.state == "archived", sb.state
sb.start()
assert sb.state == "started", sb.state

try:
    sb.archive()
    raise AssertionError("archiving a started sandbox must fail")
except DaytonaError as e:
    assert "stop it first" in str(e), str(e)

try:
    d.create(CreateSandboxFromSnapshotParams(name="x y"), timeout=10)
    raise AssertionError("a bad name must fail")
except DaytonaError as e:
    assert "invalid sandbox name" in str(e), str(e)

d.delete(sb, wait=True)
try:
    gone = d.get(sb.id)
    assert gone.state == "destroyed", gone.state
except DaytonaNotFoundError:
    pass
snap = d.snapshot.create(CreateSnapshotParams(name="sdk-snap", image="sandbar-test-busybox:latest"))
assert snap.state == "active", snap.state
assert d.snapshot.get("sdk-snap").id == snap.id
assert [s.name for s in d.snapshot.list().items] == ["sdk-snap"]
from_snap = d.create(CreateSandboxFromSnapshotParams(snapshot="sdk-snap"), timeout=30)
assert from_snap.snapshot == "sandbar-test-busybox:latest", from_snap.snapshot
d.delete(from_snap)
d.snapshot.delete(snap)
try:
    d.snapshot.get("sdk-snap")
    raise AssertionError("the snapshot must be gone")
except DaytonaNotFoundError:
    pass
print("OK")
