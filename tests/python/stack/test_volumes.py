"""Volumes with the real Daytona SDK against ``sandbar up`` (default image): ``daytona.volume.create/get/list/delete``
and ``CreateSandboxFromSnapshotParams(volumes=[VolumeMount(...)])``. One sandbox writes as its user, another reads;
a subpath shows only its folder; the data outlives both; a volume in use cannot be deleted (the error says by whom);
another organization can neither see nor mount it.

Also the rule that what the API accepts it honours or refuses: every field of the SDK's create parameters and every
filter of ``ListSandboxesQuery`` is walked, so a field the SDK gains in a later version fails here until sandbar
decides about it.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from daytona import (
    CreateSandboxFromSnapshotParams,
    Daytona,
    DaytonaConfig,
    DaytonaConflictError,
    DaytonaError,
    DaytonaNotFoundError,
    DaytonaValidationError,
    ListSandboxesQuery,
    VolumeMount,
)

from sandbar_stack import BIN_DIR


def other_org_key(stack) -> str:
    """The key of a new organization (``sandbar-api bootstrap`` on the stack's database)."""
    out = subprocess.run(
        [str(BIN_DIR / "sandbar-api"), "--data-dir", str(stack.data_dir), "bootstrap", "--org",
         "other-" + uuid.uuid4().hex[:8]],
        capture_output=True, text=True, check=True,
    )
    return next(line.split("=", 1)[1] for line in out.stdout.splitlines() if line.startswith("api_key="))


def other_org(stack) -> Daytona:
    """A second organization with a key of its own."""
    return Daytona(DaytonaConfig(api_url=stack.api_url, api_key=other_org_key(stack)))


def delete_quietly(daytona, *sandboxes) -> None:
    for sb in sandboxes:
        try:
            daytona.delete(sb, timeout=60, wait=True)
        except Exception:  # noqa: BLE001 - cleanup must not hide the test's own failure
            pass


def test_volumes_are_shared_persist_and_stay_in_their_organization(daytona, stack):
    name = "vol-" + uuid.uuid4().hex[:8]
    vol = daytona.volume.get(name, create=True)
    assert (vol.name, vol.state) == (name, "ready")
    assert vol.id in [v.id for v in daytona.volume.list()]
    assert daytona.volume.get(name).id == vol.id

    writer = reader = later = None
    try:
        writer = daytona.create(CreateSandboxFromSnapshotParams(
            volumes=[VolumeMount(volume_id=vol.id, mount_path="/home/sandbar/vol")]), timeout=180)
        assert [(v.volume_id, v.mount_path) for v in writer.volumes] == [(vol.id, "/home/sandbar/vol")]
        r = writer.process.exec("whoami && mkdir -p ~/vol/team && echo shared > ~/vol/team/hello && echo top > ~/vol/top")
        assert r.exit_code == 0 and "sandbar" in r.result, r.result

        reader = daytona.create(CreateSandboxFromSnapshotParams(
            volumes=[VolumeMount(volume_id=name, mount_path="/mnt/team", subpath="team")]), timeout=180)
        assert reader.process.exec("cat /mnt/team/hello").result.strip() == "shared"
        assert reader.process.exec("ls -A /mnt/team").result.split() == ["hello"], "only the subpath is mounted"
        assert reader.process.exec("echo back > /mnt/team/reply").exit_code == 0
        assert writer.fs.download_file("/home/sandbar/vol/team/reply") == b"back\n"

        with pytest.raises(DaytonaConflictError) as e:
            daytona.volume.delete(vol)
        assert "in use" in str(e.value) and writer.name in str(e.value), e.value

        # Another organization: the volume does not exist for it, by id or by name.
        other = other_org(stack)
        assert other.volume.list() == []
        with pytest.raises(DaytonaNotFoundError):
            other.volume.get(name)
        with pytest.raises(DaytonaNotFoundError):
            other.create(CreateSandboxFromSnapshotParams(
                volumes=[VolumeMount(volume_id=vol.id, mount_path="/data")]), timeout=60)
        with pytest.raises(DaytonaError):
            other.volume.delete(vol)
        # Bad mounts are refused, naming what is wrong.
        for mount, needle in ((VolumeMount(volume_id=vol.id, mount_path="data"), "mountPath"),
                              (VolumeMount(volume_id=vol.id, mount_path="/usr/local/bin"), "daemon"),
                              (VolumeMount(volume_id=vol.id, mount_path="/d", subpath="../x"), "subpath")):
            with pytest.raises(DaytonaValidationError, match=needle):
                daytona.create(CreateSandboxFromSnapshotParams(volumes=[mount]), timeout=60)

        # Both sandboxes go; the data stays for the next one.
        delete_quietly(daytona, writer, reader)
        writer = reader = None
        later = daytona.create(CreateSandboxFromSnapshotParams(
            volumes=[VolumeMount(volume_id=vol.id, mount_path="/data")]), timeout=180)
        assert later.process.exec("cat /data/team/hello /data/top").result == "shared\ntop\n"
        delete_quietly(daytona, later)
        later = None

        daytona.volume.delete(vol)
        deadline = time.monotonic() + 30
        while True:
            try:
                daytona.volume.get(name)
            except DaytonaNotFoundError:
                break
            assert time.monotonic() < deadline, "the volume was not removed"
            time.sleep(0.2)
        assert not list((stack.data_dir / "runner" / "volumes").glob(f"*/{vol.id}")), "its data is gone"
    finally:
        delete_quietly(daytona, *(s for s in (writer, reader, later) if s is not None))
        try:
            daytona.volume.delete(daytona.volume.get(name))
        except Exception:  # noqa: BLE001
            pass


# Every create parameter of the SDK: refused (the value and the camelCase name the 400 must mention), honoured
# (checked on the sandboxes below), or client-side (never sent).
REFUSED = {
    "secrets": ({"API_KEY": "vault-name"}, "secrets"),
    "auto_pause_interval": (30, "autoPauseInterval"),
    "ttl_minutes": (60, "ttlMinutes"),
    "otel_endpoint_override": ("http://otel:4318", "otelEndpointOverride"),
    "spot": (True, "spot"),
    "kvm": (True, "kvm"),
    "domain_allow_list": ("example.com", "domainAllowList"),
}
HONOURED = {"name", "language", "os_user", "env_vars", "labels", "public", "auto_stop_interval",
            "auto_archive_interval", "auto_delete_interval", "queue_timeout", "volumes", "network_block_all",
            "network_allow_list", "outbound_proxy_url", "ephemeral", "linked_sandbox", "target", "snapshot"}
# Never sent; not every SDK version has it as a field.
CLIENT_SIDE = {"timeout"}


def test_every_create_parameter_and_list_filter_is_honoured_or_refused(daytona):
    fields = set(CreateSandboxFromSnapshotParams.model_fields) - CLIENT_SIDE
    decided = set(REFUSED) | HONOURED
    assert fields == decided, f"decide about: {fields - decided}; gone: {decided - fields}"
    for field, (value, camel) in REFUSED.items():
        with pytest.raises(DaytonaValidationError, match=camel):
            daytona.create(CreateSandboxFromSnapshotParams(**{field: value}), timeout=60)

    vol = daytona.volume.get("honoured-" + uuid.uuid4().hex[:6], create=True)
    tag = uuid.uuid4().hex[:8]
    sb = linked = None
    try:
        sb = daytona.create(CreateSandboxFromSnapshotParams(
            name="hon-" + tag, language="python", os_user="sandbar", env_vars={"K": "v"}, labels={"t": tag},
            public=True, auto_stop_interval=30, auto_archive_interval=90, auto_delete_interval=600, queue_timeout=5,
            volumes=[VolumeMount(volume_id=vol.id, mount_path="/vol")], network_allow_list="10.1.0.0/16",
            outbound_proxy_url="http://proxy.internal:3128", target="eu", snapshot=None), timeout=180)
        assert (sb.name, sb.user, sb.public, sb.target) == ("hon-" + tag, "sandbar", True, "eu")
        assert sb.labels["t"] == tag and sb.labels["code-toolbox-language"] == "python"
        assert (sb.auto_stop_interval, sb.auto_archive_interval, sb.auto_delete_interval) == (30, 90, 600)
        assert sb.network_allow_list == "10.1.0.0/16"
        assert [v.mount_path for v in sb.volumes] == ["/vol"]
        r = sb.process.exec("echo $K $HTTP_PROXY $https_proxy")
        assert r.result.split() == ["v", "http://proxy.internal:3128", "http://proxy.internal:3128"], r.result
        linked = daytona.create(CreateSandboxFromSnapshotParams(
            name="hon2-" + tag, ephemeral=True, linked_sandbox=sb.id, network_block_all=True,
            labels={"t": tag}), timeout=180)
        assert (linked.auto_delete_interval, linked.network_block_all) == (0, True)
        assert linked.linked_sandbox_id == sb.id

        walk_list_filters(daytona, sb, linked, tag)
    finally:
        delete_quietly(daytona, *(s for s in (linked, sb) if s is not None))
        try:
            daytona.volume.delete(vol)
        except Exception:  # noqa: BLE001
            pass


def walk_list_filters(daytona, sb, linked, tag) -> None:
    """Each filter of ``ListSandboxesQuery``, with a value that keeps ``sb`` and one that drops it."""
    def names(**q) -> list[str]:
        return [s.name for s in daytona.list(ListSandboxesQuery(**q)) if s.labels.get("t") == tag]

    past = datetime.now(timezone.utc) - timedelta(hours=1)
    future = datetime.now(timezone.utc) + timedelta(hours=1)
    keep_drop = {
        "limit": (1, None),
        "id": (sb.id[:8].upper(), "zzzz"),
        "name": ("HON-", "nope"),
        "labels": ({"t": tag}, {"t": "other"}),
        "states": (["started"], ["stopped"]),
        "snapshots": ([sb.snapshot], ["no-such-snapshot"]),
        "targets": (["eu"], ["us"]),
        "min_cpu": (1, 64),
        "max_cpu": (64, None),
        "min_memory_gib": (1, 512),
        "max_memory_gib": (512, None),
        "min_disk_gib": (1, 900),
        "max_disk_gib": (900, None),
        "is_public": (True, False),
        "is_recoverable": (False, True),
        "created_at_after": (past, future),
        "created_at_before": (future, past),
        "last_activity_after": (past, future),
        "last_activity_before": (future, past),
        "auto_destroy_at_after": (None, past),
        "auto_destroy_at_before": (None, future),
        "sort": ("name", None),
        "order": ("asc", None),
    }
    fields = {f.name for f in dataclasses.fields(ListSandboxesQuery)}
    assert fields == set(keep_drop), f"decide about: {fields - set(keep_drop)}"
    for field, (keep, drop) in keep_drop.items():
        if keep is not None:
            assert sb.name in names(**{field: keep}), f"{field}={keep!r} must keep {sb.name}"
        if drop is not None:
            assert sb.name not in names(**{field: drop}), f"{field}={drop!r} must drop {sb.name}"
    # Sort and order really order; a page of one still reaches everything.
    assert names(sort="name", order="asc") == [sb.name, linked.name]
    assert names(sort="name", order="desc") == [linked.name, sb.name]
    assert names(sort="createdAt", order="asc", limit=1) == [sb.name, linked.name]
