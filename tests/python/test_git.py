"""`sandbox.git` through the real SDK against a local bare repository.

The remote is a bare repository made by the test with the host's `git`; every SDK call is checked against what
`git` itself says about the clone and the remote afterwards.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from daytona import DaytonaError, DaytonaNotFoundError

AUTHOR, EMAIL = "Sandbar Tester", "tester@sandbar.invalid"


def git(*args: str, cwd: Path | None = None) -> str:
    env = dict(os.environ)
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_AUTHOR_NAME="Seed",
        GIT_AUTHOR_EMAIL="seed@sandbar.invalid",
        GIT_COMMITTER_NAME="Seed",
        GIT_COMMITTER_EMAIL="seed@sandbar.invalid",
    )
    out = subprocess.run(
        ["git", "-c", "init.defaultBranch=main", *args],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


@pytest.fixture
def remote(tmp_path) -> dict:
    """A bare repo `remote.git` with one commit on `main` (README.md) and a branch `other` (other.txt)."""
    bare = tmp_path / "remote.git"
    git("init", "--bare", "-b", "main", str(bare))
    seed = tmp_path / "seed"
    git("clone", str(bare), str(seed))
    (seed / "README.md").write_text("hello\n")
    git("add", "README.md", cwd=seed)
    git("commit", "-m", "initial", cwd=seed)
    first = git("rev-parse", "HEAD", cwd=seed)
    git("push", "origin", "main", cwd=seed)
    git("checkout", "-b", "other", cwd=seed)
    (seed / "other.txt").write_text("other\n")
    git("add", "other.txt", cwd=seed)
    git("commit", "-m", "other branch", cwd=seed)
    git("push", "origin", "other", cwd=seed)
    git("checkout", "main", cwd=seed)
    return {"bare": bare, "url": f"file://{bare}", "seed": seed, "first": first}


@pytest.fixture
def clone(sandbox, remote, ws) -> Path:
    path = ws / "repo"
    sandbox.git.clone(remote["url"], str(path))
    return path


def statuses(st) -> dict[str, tuple[str, str]]:
    return {f.name: (f.staging.value, f.worktree.value) for f in st.file_status}


def test_clone(sandbox, remote, clone):
    assert (clone / ".git").is_dir()
    assert (clone / "README.md").read_text() == "hello\n"
    assert git("rev-parse", "HEAD", cwd=clone) == remote["first"]
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=clone) == "main"


def test_clone_plain_path_url(sandbox, remote, ws):
    path = ws / "repo-plain"
    sandbox.git.clone(str(remote["bare"]), str(path))
    assert (path / "README.md").read_text() == "hello\n"


def test_clone_branch(sandbox, remote, ws):
    path = ws / "repo-other"
    sandbox.git.clone(remote["url"], str(path), branch="other")
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=path) == "other"
    assert (path / "other.txt").read_text() == "other\n"
    assert sandbox.git.status(str(path)).current_branch == "other"


def test_clone_commit_id(sandbox, remote, ws):
    path = ws / "repo-at-commit"
    sandbox.git.clone(remote["url"], str(path), commit_id=remote["first"])
    assert git("rev-parse", "HEAD", cwd=path) == remote["first"]


def test_clone_missing_repository_fails(sandbox, clone, ws, tmp_path):
    # `clone` (the fixture) proves the endpoint works, so the error below is about the missing repository.
    with pytest.raises(DaytonaError):
        sandbox.git.clone(f"file://{tmp_path}/no-such-repo.git", str(ws / "never"))
    assert not (ws / "never" / ".git").exists()


def test_status_clean_and_dirty(sandbox, clone):
    st = sandbox.git.status(str(clone))
    assert st.current_branch == "main"
    assert st.file_status == []
    assert st.ahead in (None, 0) and st.behind in (None, 0)

    (clone / "README.md").write_text("hello\nchanged\n")
    (clone / "new.txt").write_text("new\n")
    st = sandbox.git.status(str(clone))
    got = statuses(st)
    assert set(got) == {"README.md", "new.txt"}
    assert got["README.md"][1] == "Modified"
    assert got["new.txt"] == ("Untracked", "Untracked")


def test_add_and_commit(sandbox, clone):
    (clone / "README.md").write_text("hello\nchanged\n")
    (clone / "new.txt").write_text("new\n")
    sandbox.git.add(str(clone), ["README.md", "new.txt"])
    staged = git("diff", "--cached", "--name-status", cwd=clone).splitlines()
    assert sorted(staged) == ["A\tnew.txt", "M\tREADME.md"]
    got = statuses(sandbox.git.status(str(clone)))
    assert got["new.txt"][0] == "Added"
    assert got["README.md"][0] == "Modified"

    res = sandbox.git.commit(str(clone), "add new.txt", AUTHOR, EMAIL)
    assert res.sha == git("rev-parse", "HEAD", cwd=clone)
    assert git("log", "-1", "--format=%an|%ae|%s", cwd=clone) == f"{AUTHOR}|{EMAIL}|add new.txt"
    st = sandbox.git.status(str(clone))
    assert st.file_status == []
    assert st.ahead in (None, 1)


def test_add_directory(sandbox, clone):
    # SDK docstring: "List of file paths or directories to stage, relative to the repository root."
    (clone / "d" / "e").mkdir(parents=True)
    (clone / "d" / "x.txt").write_text("x\n")
    (clone / "d" / "e" / "y.txt").write_text("y\n")
    (clone / "outside.txt").write_text("not staged\n")
    sandbox.git.add(str(clone), ["d"])
    assert git("diff", "--cached", "--name-only", cwd=clone).splitlines() == ["d/e/y.txt", "d/x.txt"]


def test_commit_allow_empty(sandbox, clone):
    before = git("rev-parse", "HEAD", cwd=clone)
    res = sandbox.git.commit(str(clone), "empty", AUTHOR, EMAIL, allow_empty=True)
    assert res.sha != before
    assert git("rev-parse", "HEAD~1", cwd=clone) == before


def test_branches_create_checkout(sandbox, clone):
    br = sandbox.git.branches(str(clone))
    assert "main" in br.branches
    sandbox.git.create_branch(str(clone), "feature")
    assert "feature" in sandbox.git.branches(str(clone)).branches
    # Whether create_branch also switches is not pinned here (upstream's daemon does `Checkout{Create: true}`,
    # i.e. it switches); checkout_branch below is explicit either way.
    sandbox.git.checkout_branch(str(clone), "main")
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=clone) == "main"

    sandbox.git.checkout_branch(str(clone), "feature")
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=clone) == "feature"
    assert sandbox.git.status(str(clone)).current_branch == "feature"

    sandbox.git.checkout_branch(str(clone), "main")
    assert sandbox.git.status(str(clone)).current_branch == "main"


def test_checkout_missing_branch_is_not_found(sandbox, clone):
    with pytest.raises(DaytonaNotFoundError):
        sandbox.git.checkout_branch(str(clone), "no-such-branch")
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=clone) == "main"


def test_push(sandbox, remote, clone):
    (clone / "pushed.txt").write_text("pushed\n")
    sandbox.git.add(str(clone), ["pushed.txt"])
    sha = sandbox.git.commit(str(clone), "to push", AUTHOR, EMAIL).sha
    sandbox.git.push(str(clone))
    assert git("--git-dir", str(remote["bare"]), "rev-parse", "main") == sha
    st = sandbox.git.status(str(clone))
    assert st.ahead in (None, 0)


def test_push_new_branch_with_upstream(sandbox, remote, clone):
    sandbox.git.create_branch(str(clone), "feature")
    sandbox.git.checkout_branch(str(clone), "feature")
    (clone / "f.txt").write_text("f\n")
    sandbox.git.add(str(clone), ["f.txt"])
    sha = sandbox.git.commit(str(clone), "feature work", AUTHOR, EMAIL).sha
    sandbox.git.push(str(clone), branch="feature", set_upstream=True)
    assert git("--git-dir", str(remote["bare"]), "rev-parse", "feature") == sha
    assert git("rev-parse", "--abbrev-ref", "feature@{upstream}", cwd=clone) == "origin/feature"


def test_pull(sandbox, remote, clone):
    seed = remote["seed"]
    (seed / "from-elsewhere.txt").write_text("remote change\n")
    git("add", "from-elsewhere.txt", cwd=seed)
    git("commit", "-m", "remote change", cwd=seed)
    git("push", "origin", "main", cwd=seed)
    remote_sha = git("rev-parse", "HEAD", cwd=seed)

    sandbox.git.pull(str(clone))
    assert (clone / "from-elsewhere.txt").read_text() == "remote change\n"
    assert git("rev-parse", "HEAD", cwd=clone) == remote_sha
    st = sandbox.git.status(str(clone))
    assert st.behind in (None, 0) and st.file_status == []


def test_status_of_non_repository_fails(sandbox, clone, ws):
    assert sandbox.git.status(str(clone)).current_branch == "main"
    with pytest.raises(DaytonaError):
        sandbox.git.status(str(ws))
