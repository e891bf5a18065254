"""Remotes end to end, with real DVC, real git URLs and a real S3-compatible server (SeaweedFS `weed`, started on
free ports of 127.0.0.1 by a fixture and stopped after; skipped with the reason where `weed` is not installed).

A maintainer's repository with the project's own `.dvc/config` (default remote `~/ham10000-storage`; HOME is a
folder of the test, so nothing is written to the real one) tags two releases and pushes them to the default
folder. Then: a clone elsewhere and `dvc get` from a `file://` git URL both pull from it; the maintainer follows
docs/s3-dask.md's procedure to move to S3 (both tags pushed); on "another machine" (another HOME, no folder) a clone of
the older tag pulls only its test split from S3 as docs/downstream.md says and `ham verify` passes; `dvc get` and
`dvc import` of the older tag by git URL, then `dvc update --rev` to a tag made after the move.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.common import read_csv
from tests.doc_blocks import block
from tests.release_repo import REPO_ROOT, commit_release, init_release_repo, sample_rows, sh
from tests.seaweed import BUCKET, CREDENTIALS, running

pytestmark = [pytest.mark.real_data, pytest.mark.slow]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with running(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield {"url": f"s3://{BUCKET}/store", "endpoint": server.endpoint}


def verified(folder: Path) -> int:
    """`ham verify` passes on `folder`; returns the number of images it holds."""
    result = sh(["ham", "verify", str(folder)], folder.parent)
    assert "all" in result.stdout and "match the manifest" in result.stdout
    return len(list((folder / "images").glob("*.jpg")))


@pytest.fixture(scope="module")
def maintainer(ham_data, tmp_path_factory):
    """The project's .dvc/config; releases v1.0 and v1.1 tagged and pushed to the default folder remote."""
    base = tmp_path_factory.mktemp("remotes")
    env = {"HOME": str(base / "home")}
    (base / "home").mkdir()
    repo = base / "maintainer"
    init_release_repo(repo, env, dvc_config=(REPO_ROOT / ".dvc" / "config").read_text())
    rows = sample_rows(ham_data, 40)
    lesions = sorted({r["lesion_id"] for r in rows})
    split_of = {l: ("test" if i % 3 == 0 else "train") for i, l in enumerate(lesions)}
    commit_release(repo, rows[:30], split_of, ham_data, "release 1.0", env, tag="v1.0")
    sh(["dvc", "push", "-q"], repo, env)
    commit_release(repo, rows, split_of, ham_data, "release 1.1", env, tag="v1.1")
    sh(["dvc", "push", "-q"], repo, env)
    assert (base / "home" / "ham10000-storage" / "files" / "md5").is_dir()  # ~ expanded to HOME
    tests = {tag: sum(split_of[r["lesion_id"]] == "test" for r in chosen)
             for tag, chosen in (("v1.0", rows[:30]), ("v1.1", rows))}
    return {"base": base, "repo": repo, "env": env, "rows": rows, "split_of": split_of, "tests": tests,
            "url": f"file://{repo}"}


def test_default_remote_serves_clones_and_dvc_get_from_a_git_url(maintainer, tmp_path):
    env, url = maintainer["env"], maintainer["url"]
    clone = tmp_path / "somewhere" / "else" / "clone"  # not beside the storage folder
    sh(["git", "clone", "-q", url, str(clone)], tmp_path, env)
    sh(["dvc", "pull", "-q", "release/test"], clone, env)
    assert verified(clone / "release" / "test") == maintainer["tests"]["v1.1"]
    assert not (clone / "release" / "train").exists()
    # dvc get from a git URL: DVC's temporary clone reads the same ~/ham10000-storage.
    sh(["dvc", "get", "-q", url, "release/test", "--rev", "v1.0", "-o", str(tmp_path / "got")], tmp_path, env)
    assert verified(tmp_path / "got") == maintainer["tests"]["v1.0"]


def test_move_to_s3_and_older_tags_still_pull(maintainer, s3, ham_data, tmp_path):
    env, url, repo = maintainer["env"], maintainer["url"], maintainer["repo"]
    s3_env = {**env, **CREDENTIALS, "S3_URL": s3["url"], "S3_ENDPOINT": s3["endpoint"]}
    # The procedure's own check stops it when the push fails (no `tee` hiding DVC's exit code): a copy of the
    # repository, the bucket's endpoint a closed port; the default remote is not switched.
    broken = maintainer["base"] / "broken"
    sh(["git", "clone", "-q", url, str(broken)], maintainer["base"], env)
    dead = {**s3_env, "S3_ENDPOINT": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"}
    failed = sh(["bash", "-c", block("remote-move")], broken, dead, check=False)
    assert failed.returncode != 0 and "in sync" not in failed.stdout + failed.stderr
    assert sh(["dvc", "remote", "default"], broken, env).stdout.strip() == "local"

    moved = sh(block("remote-move"), repo, s3_env)  # docs/s3-dask.md's procedure, as written
    assert "Cache and remote 'shared' are in sync." in moved.stdout + moved.stderr
    assert "failed to collect" not in moved.stdout + moved.stderr
    # A release after the move: four images more, their lesions in test, pushed to the new default.
    rows = sample_rows(ham_data, 44)
    new = {r["lesion_id"]: "test" for r in rows[40:] if r["lesion_id"] not in maintainer["split_of"]}
    commit_release(repo, rows, {**maintainer["split_of"], **new}, ham_data, "release 1.2", s3_env, tag="v1.2")
    sh(["dvc", "push", "-q"], repo, s3_env)

    # Another machine: another HOME, so no ~/ham10000-storage; only git and the bucket.
    other = {**CREDENTIALS, "HOME": str(tmp_path / "other-home"), "REPO": url, "S3_URL": s3["url"],
             "S3_ENDPOINT": s3["endpoint"]}
    (tmp_path / "other-home").mkdir()
    sh(block("old-tag-pull"), tmp_path, other)  # clone, check out v1.0, pull the test split, verify
    clone = tmp_path / "ham10000"
    assert sh(["git", "describe", "--tags"], clone, other).stdout.strip() == "v1.0"
    assert verified(clone / "release" / "test") == maintainer["tests"]["v1.0"]
    assert not (clone / "release" / "train").exists()
    # Without the remote in config.local the old tag points at a folder this machine lacks: a clear failure.
    bare = tmp_path / "bare"
    sh(["git", "clone", "-q", "--branch", "v1.0", url, str(bare)], tmp_path, other)
    assert sh(["dvc", "pull", "-q", "release/test"], bare, other, check=False).returncode != 0

    # dvc get / dvc import of the older tag by git URL, pointed at the bucket; then dvc update to the newer tag.
    sh(block("get-old-tag"), tmp_path, other)
    assert verified(tmp_path / "test-v1.0") == maintainer["tests"]["v1.0"]
    override = ["--config", str(tmp_path / "shared.dvcconfig"), "--remote", "shared"]
    downstream = tmp_path / "downstream"
    downstream.mkdir()
    sh(["git", "init", "-q"], downstream, other)
    sh(["dvc", "init", "-q"], downstream, other)
    sh(["dvc", "import", "-q", url, "release/test", "-o", "ham10000-test", "--rev", "v1.0", *override], downstream,
       other)
    assert verified(downstream / "ham10000-test") == maintainer["tests"]["v1.0"]
    sh(["dvc", "update", "-q", "--rev", "v1.2", "ham10000-test.dvc"], downstream, other)
    images = verified(downstream / "ham10000-test")
    assert images == len(read_csv(repo / "release" / "test" / "metadata.csv")) > maintainer["tests"]["v1.0"]



def test_guides_get_import_and_diff_a_release(maintainer, tmp_path):
    """The README's "get a release" block and the downstream guide's get, import and diff blocks, as written, with
    REPO the maintainer's repository by git URL (its releases in the default folder remote)."""
    env = {**maintainer["env"], "REPO": maintainer["url"]}
    (tmp_path / "readme").mkdir()
    result = sh(block("readme-get-release"), tmp_path / "readme", env)
    assert verified(tmp_path / "readme" / "ham10000-test") == maintainer["tests"]["v1.1"]
    assert f"test   {maintainer['tests']['v1.1']:>6}" in result.stdout  # ham summary of the split folder

    work = tmp_path / "guide"
    work.mkdir()
    result = sh(block("downstream-get"), work, env)
    assert verified(work / "ham10000-v1.1-test") == maintainer["tests"]["v1.1"]
    assert (work / "ham10000-v1.1" / "train" / "manifest.csv").is_file()
    assert f"release: {maintainer['tests']['v1.1']} images" in result.stdout

    sh(block("downstream-import"), work, env)
    project = work / "my-project"
    assert verified(project / "ham10000-test") == maintainer["tests"]["v1.1"]  # updated from v1.0 to v1.1
    assert "rev: v1.1" in (project / "ham10000-test.dvc").read_text()

    result = sh(block("downstream-diff"), work, env)
    added = len(maintainer["rows"]) - 30
    assert f"added: {added}" in result.stdout and "lesions that moved split: none" in result.stdout, result.stdout
