"""`sandbox.git` reset, restore, remotes, config and stored credentials through the real SDK, each checked against
what `git` itself (run by the test, or in the sandbox) says afterwards."""

from __future__ import annotations

import stat

import pytest
from daytona import DaytonaError

from test_git import AUTHOR, EMAIL, clone, git, remote  # noqa: F401 - fixtures and helpers shared with test_git


def commit_file(sandbox, repo, name: str, text: str, message: str) -> str:
    (repo / name).write_text(text)
    sandbox.git.add(str(repo), [name])
    return sandbox.git.commit(str(repo), message, AUTHOR, EMAIL).sha


def test_reset_modes_and_files(sandbox, clone):  # noqa: F811 - the fixture
    first = git("rev-parse", "HEAD", cwd=clone)
    second = commit_file(sandbox, clone, "a.txt", "one\n", "second")
    sandbox.git.reset(str(clone), mode="soft", target=first)
    assert git("rev-parse", "HEAD", cwd=clone) == first
    assert git("diff", "--cached", "--name-only", cwd=clone) == "a.txt"

    # Files only: unstaged, kept in the working tree.
    sandbox.git.reset(str(clone), files=["a.txt"])
    assert git("diff", "--cached", "--name-only", cwd=clone) == ""
    assert (clone / "a.txt").exists()

    sandbox.git.add(str(clone), ["a.txt"])
    sandbox.git.reset(str(clone), mode="hard", target=first)
    assert not (clone / "a.txt").exists()
    sandbox.git.reset(str(clone), mode="hard", target=second)
    assert (clone / "a.txt").read_text() == "one\n"

    with pytest.raises(DaytonaError, match="mode must be one of") as e:
        sandbox.git.reset(str(clone), mode="sideways")
    assert e.value.status_code == 400
    with pytest.raises(DaytonaError, match="only unstages"):
        sandbox.git.reset(str(clone), mode="hard", files=["a.txt"])
    with pytest.raises(DaytonaError):
        sandbox.git.reset(str(clone), target="no-such-revision")


def test_restore_worktree_staged_and_source(sandbox, clone):  # noqa: F811
    first = git("rev-parse", "HEAD", cwd=clone)
    commit_file(sandbox, clone, "README.md", "changed\n", "change readme")
    (clone / "README.md").write_text("dirty\n")
    sandbox.git.restore(str(clone), ["README.md"])
    assert (clone / "README.md").read_text() == "changed\n"

    (clone / "README.md").write_text("staged\n")
    sandbox.git.add(str(clone), ["README.md"])
    sandbox.git.restore(str(clone), ["README.md"], staged=True)
    assert git("diff", "--cached", "--name-only", cwd=clone) == ""
    assert (clone / "README.md").read_text() == "staged\n"

    sandbox.git.restore(str(clone), ["README.md"], source=first)
    assert (clone / "README.md").read_text() == "hello\n"

    with pytest.raises(DaytonaError):
        sandbox.git.restore(str(clone), ["no-such-file.txt"])


def test_remotes_add_list_overwrite_and_fetch(sandbox, clone, remote, tmp_path):  # noqa: F811
    assert sandbox.git.remote_get(str(clone), "origin") == remote["url"]
    other = tmp_path / "other.git"
    git("clone", "--bare", str(remote["bare"]), str(other))
    sandbox.git.remote_add(str(clone), "upstream", str(other), fetch=True)
    names = {r.name: r.url for r in sandbox.git.remotes(str(clone)).remotes}
    assert names == {"origin": remote["url"], "upstream": str(other)}
    assert "upstream/other" in git("branch", "-r", cwd=clone)

    with pytest.raises(DaytonaError, match="already exists") as e:
        sandbox.git.remote_add(str(clone), "upstream", "file:///elsewhere.git")
    assert e.value.status_code == 409
    sandbox.git.remote_add(str(clone), "upstream", "file:///elsewhere.git", overwrite=True)
    assert sandbox.git.remote_get(str(clone), "upstream") == "file:///elsewhere.git"
    assert sandbox.git.remote_get(str(clone), "nope") is None
    with pytest.raises(DaytonaError, match="must not start with '-'"):
        sandbox.git.remote_add(str(clone), "--evil", "x")


def test_config_scopes_and_user(sandbox, clone, daemon):  # noqa: F811
    sandbox.git.set_config("sandbar.test", "global value")
    assert sandbox.git.get_config("sandbar.test") == "global value"
    assert "global value" in (daemon.home_dir / ".gitconfig").read_text()
    assert sandbox.git.get_config("sandbar.unset-key") is None

    sandbox.git.set_config("sandbar.test", "-local value", scope="local", path=str(clone))
    assert sandbox.git.get_config("sandbar.test", scope="local", path=str(clone)) == "-local value"
    assert git("config", "--local", "sandbar.test", cwd=clone) == "-local value"

    sandbox.git.configure_user("Local User", "local@sandbar.invalid", scope="local", path=str(clone))
    assert git("config", "--local", "user.email", cwd=clone) == "local@sandbar.invalid"
    (clone / "b.txt").write_text("b\n")
    sandbox.git.add(str(clone), ["b.txt"])
    sandbox.process.exec("git commit -q -m by-config", cwd=str(clone))
    assert git("log", "-1", "--format=%an <%ae>", cwd=clone) == "Local User <local@sandbar.invalid>"

    with pytest.raises(DaytonaError, match="path is required") as e:
        sandbox.git.set_config("sandbar.test", "x", scope="local")
    assert e.value.status_code == 400
    with pytest.raises(DaytonaError, match="scope must be"):
        sandbox.git.get_config("sandbar.test", scope="galaxy")
    with pytest.raises(DaytonaError, match="dotted config name"):
        sandbox.git.set_config("nodot", "x")


def test_credentials_are_stored_for_git_to_use(sandbox, daemon):
    sandbox.git.dangerously_authenticate("robot", "s3cr:t/pass", host="git.sandbar.invalid")
    sandbox.git.dangerously_authenticate("robot2", "second", host="git.sandbar.invalid")
    creds = daemon.home_dir / ".git-credentials"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    lines = [line for line in creds.read_text().splitlines() if "git.sandbar.invalid" in line]
    assert lines == ["https://robot2:second@git.sandbar.invalid"]
    r = sandbox.process.exec("printf 'protocol=https\\nhost=git.sandbar.invalid\\n\\n' | git credential fill")
    assert r.exit_code == 0, r.result
    assert "username=robot2\n" in r.result and "password=second\n" in r.result

    sandbox.git.dangerously_authenticate("me", "p:a/ss@w", host="other.sandbar.invalid", protocol="http")
    r = sandbox.process.exec("printf 'protocol=http\\nhost=other.sandbar.invalid\\n\\n' | git credential fill")
    assert "password=p:a/ss@w\n" in r.result
    with pytest.raises(DaytonaError, match="invalid host"):
        sandbox.git.dangerously_authenticate("u", "p", host="evil/host")
