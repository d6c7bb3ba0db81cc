"""`sandbox.fs` through the real SDK.

The daemon runs on this host, so a sandbox path is also a host path: the tests check the effect of each SDK call
on disk directly instead of trusting the daemon's own answers.
"""

from __future__ import annotations

import hashlib
import io
import os
import pwd
import grp
import stat

import pytest
from daytona import (
    DaytonaBadRequestError,
    DaytonaConflictError,
    DaytonaFileNotFoundError,
    FileDownloadRequest,
    FileUpload,
)


def test_upload_download_round_trip_bytes(sandbox, ws):
    data = os.urandom(3 * 1024 * 1024 + 123)
    dst = ws / "blob.bin"
    sandbox.fs.upload_file(data, str(dst))
    assert dst.read_bytes() == data, "uploaded bytes differ on disk"
    got = sandbox.fs.download_file(str(dst))
    assert isinstance(got, bytes)
    assert len(got) == len(data)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()


def test_upload_overwrites_existing_file(sandbox, ws):
    dst = ws / "f.txt"
    dst.write_text("old content that is longer than the new one")
    sandbox.fs.upload_file(b"new", str(dst))
    assert dst.read_bytes() == b"new"


def test_upload_from_local_path_and_download_to_local_path(sandbox, ws, tmp_path):
    src = tmp_path / "local-src.bin"
    src.write_bytes(os.urandom(200_000))
    dst = ws / "from-local.bin"
    sandbox.fs.upload_file(str(src), str(dst))
    assert dst.read_bytes() == src.read_bytes()

    local_copy = tmp_path / "sub" / "copy.bin"
    assert sandbox.fs.download_file(str(dst), str(local_copy)) is None
    assert local_copy.read_bytes() == src.read_bytes()


def test_upload_empty_file(sandbox, ws):
    dst = ws / "empty"
    sandbox.fs.upload_file(b"", str(dst))
    assert dst.exists() and dst.stat().st_size == 0


def test_upload_files_several(sandbox, ws):
    files = {ws / f"multi-{i}.txt": f"file {i}\n".encode() * (i + 1) for i in range(5)}
    files[ws / "binary.dat"] = bytes(range(256)) * 64
    sandbox.fs.upload_files([FileUpload(source=data, destination=str(p)) for p, data in files.items()])
    for p, data in files.items():
        assert p.read_bytes() == data, p


def test_upload_creates_parent_directories(sandbox, ws):
    dst = ws / "a" / "b" / "c" / "deep.txt"
    sandbox.fs.upload_files([FileUpload(source=b"deep", destination=str(dst))])
    assert dst.read_bytes() == b"deep"


def test_upload_file_stream_and_download_file_stream(sandbox, ws):
    data = os.urandom(2 * 1024 * 1024 + 7)
    dst = ws / "streamed.bin"
    sent = []
    sandbox.fs.upload_file_stream(io.BytesIO(data), str(dst), on_progress=lambda p: sent.append(p.bytes_sent))
    assert dst.read_bytes() == data
    assert sent and sent[-1] == len(data)

    received = []
    chunks = list(sandbox.fs.download_file_stream(str(dst), on_progress=lambda p: received.append(p.bytes_received)))
    assert b"".join(chunks) == data
    assert received and received[-1] == len(data)


def test_download_missing_file_raises_not_found(sandbox, ws):
    with pytest.raises(DaytonaFileNotFoundError) as excinfo:
        sandbox.fs.download_file(str(ws / "does-not-exist.txt"))
    assert excinfo.value.status_code == 404


def test_download_files_mixed_results(sandbox, ws):
    present = ws / "present.txt"
    present.write_bytes(b"here")
    missing = ws / "missing.txt"
    results = sandbox.fs.download_files(
        [FileDownloadRequest(source=str(present)), FileDownloadRequest(source=str(missing))]
    )
    assert [r.source for r in results] == [str(present), str(missing)]
    assert results[0].error is None and results[0].result == b"here"
    assert results[1].result is None and results[1].error
    assert results[1].error_details is not None
    assert results[1].error_details.code == "FILE_NOT_FOUND"
    assert results[1].error_details.status_code == 404


def test_list_files(sandbox, ws):
    (ws / "one.txt").write_bytes(b"12345")
    (ws / "sub").mkdir()
    (ws / "sub" / "nested.txt").write_bytes(b"x")
    entries = {f.name: f for f in sandbox.fs.list_files(str(ws))}
    assert set(entries) == {"one.txt", "sub"}, "list_files must list one level by default"
    assert entries["one.txt"].is_dir is False and entries["one.txt"].size == 5
    assert entries["sub"].is_dir is True


def test_list_files_depth(sandbox, ws):
    (ws / "sub").mkdir()
    (ws / "sub" / "nested.txt").write_bytes(b"x")
    entries = sandbox.fs.list_files(str(ws), depth=2)
    paths = {f.path for f in entries}
    assert paths == {str(ws / "sub"), str(ws / "sub" / "nested.txt")}


def test_list_files_missing_dir_raises_not_found(sandbox, ws):
    with pytest.raises(DaytonaFileNotFoundError):
        sandbox.fs.list_files(str(ws / "nope"))


def test_get_file_info(sandbox, ws):
    p = ws / "info.txt"
    p.write_bytes(b"hello world")
    os.chmod(p, 0o640)
    info = sandbox.fs.get_file_info(str(p))
    assert info.name == "info.txt"
    assert info.is_dir is False
    assert info.size == 11
    assert int(info.permissions, 8) == 0o640, info.permissions
    st = p.stat()
    # Upstream's daemon reports the numeric uid/gid as strings; a name is just as usable. Either must be right.
    assert info.owner in (str(st.st_uid), pwd.getpwuid(st.st_uid).pw_name), info.owner
    assert info.group in (str(st.st_gid), grp.getgrgid(st.st_gid).gr_name), info.group
    assert info.mode and info.mod_time

    d = sandbox.fs.get_file_info(str(ws))
    assert d.is_dir is True and d.name == ws.name


def test_get_file_info_missing_raises_not_found(sandbox, ws):
    with pytest.raises(DaytonaFileNotFoundError):
        sandbox.fs.get_file_info(str(ws / "missing"))


def test_create_folder(sandbox, ws):
    target = ws / "newdir"
    sandbox.fs.create_folder(str(target), "750")
    assert target.is_dir()
    assert stat.S_IMODE(target.stat().st_mode) == 0o750


def test_create_folder_nested(sandbox, ws):
    target = ws / "x" / "y" / "z"
    sandbox.fs.create_folder(str(target), "755")
    assert target.is_dir()


def test_move_files(sandbox, ws):
    src = ws / "src.txt"
    src.write_bytes(b"moving")
    dst = ws / "renamed.txt"
    sandbox.fs.move_files(str(src), str(dst))
    assert not src.exists()
    assert dst.read_bytes() == b"moving"

    (ws / "dir1").mkdir()
    (ws / "dir1" / "inner").write_bytes(b"i")
    sandbox.fs.move_files(str(ws / "dir1"), str(ws / "dir2"))
    assert (ws / "dir2" / "inner").read_bytes() == b"i" and not (ws / "dir1").exists()


def test_move_onto_existing_destination_is_a_conflict(sandbox, ws):
    (ws / "a.txt").write_bytes(b"a")
    (ws / "b.txt").write_bytes(b"b")
    with pytest.raises(DaytonaConflictError):
        sandbox.fs.move_files(str(ws / "a.txt"), str(ws / "b.txt"))
    assert (ws / "a.txt").read_bytes() == b"a" and (ws / "b.txt").read_bytes() == b"b"


def test_move_missing_source_raises_not_found(sandbox, ws):
    with pytest.raises(DaytonaFileNotFoundError):
        sandbox.fs.move_files(str(ws / "nope"), str(ws / "dest"))


def test_delete_file(sandbox, ws):
    f = ws / "gone.txt"
    f.write_bytes(b"bye")
    sandbox.fs.delete_file(str(f))
    assert not f.exists()


def test_delete_directory_needs_recursive(sandbox, ws):
    d = ws / "tree"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "leaf").write_bytes(b"x")
    with pytest.raises(DaytonaBadRequestError):
        sandbox.fs.delete_file(str(d))
    assert (d / "sub" / "leaf").exists(), "a non-recursive delete removed a non-empty directory"
    sandbox.fs.delete_file(str(d), recursive=True)
    assert not d.exists()


def test_delete_missing_raises_not_found(sandbox, ws):
    with pytest.raises(DaytonaFileNotFoundError):
        sandbox.fs.delete_file(str(ws / "never-existed"))


def test_find_files(sandbox, ws):
    (ws / "a.txt").write_text("first line\nthe needle is here\nlast\n")
    (ws / "sub").mkdir()
    (ws / "sub" / "b.py").write_text("needle = 1\n")
    (ws / "c.txt").write_text("nothing to see\n")
    matches = sandbox.fs.find_files(str(ws), "needle")
    got = sorted((m.file, m.line, m.content.rstrip("\r\n")) for m in matches)
    assert got == [
        (str(ws / "a.txt"), 2, "the needle is here"),
        (str(ws / "sub" / "b.py"), 1, "needle = 1"),
    ]


def test_search_files(sandbox, ws):
    for rel in ["a.py", "b.txt", "sub/c.py", "sub/deeper/d.py", "sub/e.md"]:
        p = ws / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(rel)
    res = sandbox.fs.search_files(str(ws), "*.py")
    assert sorted(res.files) == sorted(str(ws / r) for r in ["a.py", "sub/c.py", "sub/deeper/d.py"])


def test_replace_in_files(sandbox, ws):
    f1 = ws / "r1.txt"
    f2 = ws / "r2.txt"
    f3 = ws / "untouched.txt"
    f1.write_text("old_value here and old_value there\n")
    f2.write_text("line\nold_value\n")
    f3.write_text("old_value\n")
    results = sandbox.fs.replace_in_files([str(f1), str(f2)], "old_value", "new_value")
    assert sorted((r.file, r.success) for r in results) == [(str(f1), True), (str(f2), True)]
    assert f1.read_text() == "new_value here and new_value there\n"
    assert f2.read_text() == "line\nnew_value\n"
    assert f3.read_text() == "old_value\n"


def test_replace_in_files_reports_missing_file(sandbox, ws):
    f1 = ws / "r1.txt"
    f1.write_text("aaa\n")
    missing = ws / "missing.txt"
    results = sandbox.fs.replace_in_files([str(f1), str(missing)], "aaa", "bbb")
    by_file = {r.file: r for r in results}
    assert by_file[str(f1)].success is True
    assert by_file[str(missing)].success is False and by_file[str(missing)].error
    assert f1.read_text() == "bbb\n"


def test_set_file_permissions(sandbox, ws):
    f = ws / "perm.txt"
    f.write_bytes(b"x")
    os.chmod(f, 0o644)
    sandbox.fs.set_file_permissions(str(f), mode="600")
    assert stat.S_IMODE(f.stat().st_mode) == 0o600

    me = pwd.getpwuid(os.getuid()).pw_name
    my_group = grp.getgrgid(os.getgid()).gr_name
    sandbox.fs.set_file_permissions(str(f), owner=me, group=my_group)
    assert (f.stat().st_uid, f.stat().st_gid) == (os.getuid(), os.getgid())
    assert stat.S_IMODE(f.stat().st_mode) == 0o600, "changing owner/group must leave the mode alone"


def test_relative_paths_resolve_against_work_dir(sandbox, daemon):
    # SDK docstrings: "Relative paths are resolved based on the sandbox working directory."
    rel = "t/relative-check/rel.txt"
    sandbox.fs.upload_file(b"relative", rel)
    assert (daemon.work_dir / rel).read_bytes() == b"relative"
    assert sandbox.fs.download_file(rel) == b"relative"
    assert sandbox.fs.get_file_info(rel).size == 8
    sandbox.fs.delete_file(rel)
    assert not (daemon.work_dir / rel).exists()
